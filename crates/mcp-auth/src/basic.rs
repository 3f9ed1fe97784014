//! HTTP Basic (RFC 7617) with Argon2id password hashes.
//!
//! Users are configured with PHC strings (`$argon2id$v=19$m=...`), the format the
//! `argon2` crate and most tools produce ([`hash_password`] makes one). A plaintext
//! password is accepted only with a loud warning at build time, and is hashed then.
//!
//! Verification runs on the blocking thread pool (an Argon2 verification takes tens of
//! milliseconds by design and must not stall the executor), bounded by a semaphore so a
//! flood of Basic attempts cannot take every blocking thread. The wait for a permit is
//! bounded too ([`BasicAuthenticatorBuilder::max_queued`], default 16): past it an
//! attempt is refused at once as unavailable (503 with `Retry-After`), so a flood of wrong
//! passwords costs a legitimate login at most the queue's length, and a user whose
//! credentials are in the verified cache (below) never queues at all. An unknown user is verified
//! against a dummy hash made with the same parameters, so the work, and the time, is the
//! same whether the user exists or not; the failure detail does not say which it was.
//!
//! **Verified-credential cache.** An Argon2 verification per request (about 25 ms of CPU
//! with the `argon2` crate's default parameters) would cap Basic clients at about 40
//! requests per second per core and let every client wait behind a flood of wrong
//! passwords, so, like application servers' authentication caches, a successful
//! verification is remembered for a while (default: 1,024 entries, 5 minutes) and a
//! repeat of the same user name and password skips Argon2:
//! - the key is an HMAC-SHA-256 of the user name and password under a random key drawn
//!   when the authenticator is built; neither the password nor an unkeyed hash of it is
//!   kept;
//! - only successes are cached: a wrong password always pays the full verification, and
//!   a client without a valid password cannot add entries, so the memory is bounded by
//!   the capacity whatever clients send;
//! - the users are fixed when the authenticator is built, so a new configuration (a new
//!   authenticator) starts with an empty cache: a removed user or changed password stops
//!   working at once;
//! - a hit answers faster than a verification, but only for the right password, which
//!   the caller already holds: it tells nothing new.
//!
//! `cache_capacity(0)` turns it off.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params};
use hmac::{Hmac, Mac};
use http::request::Parts;
use mcp_core::{AuthMethod, Principal};
use rand::Rng;
use sha2::Sha256;
use tokio::sync::{Semaphore, TryAcquireError};

use crate::authenticator::{AuthFuture, Authenticator, Failure, Outcome, Scheme};
use crate::cache::{VerifiedCache, now_unix};
use crate::credentials;
use crate::error::ConfigError;
use crate::secret::SecretString;

/// The default bound on concurrent Argon2 verifications.
pub const DEFAULT_MAX_CONCURRENT_VERIFICATIONS: usize = 4;
/// The default bound on verifications waiting for a permit: past it, an attempt is
/// refused at once (503 with `Retry-After`).
pub const DEFAULT_MAX_QUEUED_VERIFICATIONS: usize = 16;
/// The default capacity of the verified-credential cache.
pub const DEFAULT_CACHE_CAPACITY: usize = 1_024;
/// The default longest time a verified user name and password are served from the cache
/// (5 minutes).
pub const DEFAULT_CACHE_MAX_TTL: Duration = Duration::from_secs(300);

#[derive(Clone)]
enum Password {
    Phc(String),
    Plain(SecretString),
}

/// A Basic user: name, password (PHC hash or plaintext), principal id and scopes.
/// `Debug` never shows the password or its hash.
#[derive(Clone)]
pub struct BasicUser {
    username: String,
    password: Password,
    principal: Option<String>,
    scopes: Vec<String>,
}

impl fmt::Debug for BasicUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicUser")
            .field("username", &self.username)
            .field("principal", &self.principal)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl BasicUser {
    /// A user with an Argon2id PHC string.
    pub fn phc(username: impl Into<String>, phc: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: Password::Phc(phc.into()),
            principal: None,
            scopes: Vec::new(),
        }
    }

    /// A user with a plaintext password (hashed at build time, with a warning).
    pub fn plaintext(username: impl Into<String>, password: impl Into<SecretString>) -> Self {
        Self {
            username: username.into(),
            password: Password::Plain(password.into()),
            principal: None,
            scopes: Vec::new(),
        }
    }

    /// The principal id (default: the user name).
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
}

/// Hashes a password with Argon2id and the given parameters (default: the `argon2`
/// crate's defaults, m=19456 KiB, t=2, p=1), returning a PHC string.
pub fn hash_password(password: &str, params: Option<Params>) -> Result<String, ConfigError> {
    let argon = Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params.unwrap_or_default(),
    );
    let mut salt = [0u8; 16];
    rand::rng().fill(&mut salt);
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| ConfigError::invalid("auth.users", format!("salt: {e}")))?;
    argon
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| ConfigError::invalid("auth.users", format!("argon2: {e}")))
}

struct UserRecord {
    phc: Arc<str>,
    principal: Principal,
}

/// Authenticates `Authorization: Basic` credentials against Argon2id hashes.
///
/// ```
/// use mcp_auth::{BasicAuthenticator, BasicUser, basic::hash_password};
/// let params = argon2::Params::new(256, 1, 1, None).unwrap(); // small, for the example
/// let phc = hash_password("correct horse", Some(params)).unwrap();
/// let basic = BasicAuthenticator::builder().user(BasicUser::phc("alice", phc)).build().unwrap();
/// # let _ = basic;
/// ```
#[derive(Clone)]
pub struct BasicAuthenticator {
    users: Arc<HashMap<String, UserRecord>>,
    dummy: Arc<str>,
    permits: Arc<Semaphore>,
    /// Verifications waiting for a permit now, and their bound.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    cache: Option<Arc<Verified>>,
}

/// A place in the verification queue, given back when dropped.
struct QueueSlot(Arc<AtomicUsize>);

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Successful verifications, keyed by an HMAC of the user name and password.
struct Verified {
    /// HMAC-SHA-256 keyed with 32 random bytes, before any input.
    mac: Hmac<Sha256>,
    map: VerifiedCache,
}

impl Verified {
    fn digest(&self, username: &str, password: &str) -> [u8; 32] {
        let mut mac = self.mac.clone();
        // The length first, so that no two (name, password) pairs give the same input.
        mac.update(&(username.len() as u64).to_le_bytes());
        mac.update(username.as_bytes());
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for BasicAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut users: Vec<&str> = self.users.keys().map(String::as_str).collect();
        users.sort_unstable();
        f.debug_struct("BasicAuthenticator")
            .field("users", &users)
            .field("cache", &self.cache.as_ref().map(|c| c.map.capacity()))
            .field("max_queued", &self.max_queued)
            .finish_non_exhaustive()
    }
}

/// Builder of [`BasicAuthenticator`].
#[derive(Debug, Default)]
pub struct BasicAuthenticatorBuilder {
    users: Vec<BasicUser>,
    params: Option<Params>,
    max_concurrent: Option<usize>,
    max_queued: Option<usize>,
    cache_capacity: Option<usize>,
    cache_max_ttl: Option<Duration>,
}

impl BasicAuthenticatorBuilder {
    /// Adds a user.
    pub fn user(mut self, user: BasicUser) -> Self {
        self.users.push(user);
        self
    }

    /// Adds users.
    pub fn users(mut self, users: impl IntoIterator<Item = BasicUser>) -> Self {
        self.users.extend(users);
        self
    }

    /// Argon2 parameters used to hash plaintext passwords (default: the crate's).
    pub fn argon2_params(mut self, params: Params) -> Self {
        self.params = Some(params);
        self
    }

    /// The most verifications running at once (default 4).
    pub fn max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = Some(n);
        self
    }

    /// The most verifications waiting for one of the [`max_concurrent`](Self::max_concurrent)
    /// permits (default 16). Past it, an attempt is refused at once as unavailable (the
    /// authentication layer answers 503 with `Retry-After`) instead of waiting: a flood of
    /// wrong passwords cannot make every login wait behind it. A user whose credentials
    /// are in the verified cache never waits. 0: refuse whenever every permit is busy.
    pub fn max_queued(mut self, n: usize) -> Self {
        self.max_queued = Some(n);
        self
    }

    /// The capacity of the verified-credential cache (default 1,024; 0 turns it off).
    /// See the [module documentation](self) for what it keeps.
    pub fn cache_capacity(mut self, capacity: usize) -> Self {
        self.cache_capacity = Some(capacity);
        self
    }

    /// The longest time a verified user name and password are served from the cache
    /// (default 5 minutes, whole seconds; under a second turns the cache off).
    pub fn cache_max_ttl(mut self, ttl: Duration) -> Self {
        self.cache_max_ttl = Some(ttl);
        self
    }

    /// Validates (PHC strings must be Argon2id), hashes plaintext passwords, builds.
    pub fn build(self) -> Result<BasicAuthenticator, ConfigError> {
        if self.users.is_empty() {
            return Err(ConfigError::invalid(
                "auth.users",
                "at least one user is required",
            ));
        }
        let mut users = HashMap::new();
        let mut dummy_params: Option<Params> = None;
        for (i, u) in self.users.into_iter().enumerate() {
            let key = format!("auth.users[{i}]");
            if u.username.trim().is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.username"),
                    "must not be empty or only spaces",
                ));
            }
            if u.principal.as_ref().is_some_and(|p| p.trim().is_empty()) {
                return Err(ConfigError::invalid(
                    format!("{key}.principal"),
                    "must not be empty or only spaces",
                ));
            }
            if u.username.contains(':') || u.username.chars().any(char::is_control) {
                return Err(ConfigError::invalid(
                    format!("{key}.username"),
                    "must not contain a colon or control characters (RFC 7617)",
                ));
            }
            let phc = match u.password {
                Password::Phc(phc) => {
                    let parsed = PasswordHash::new(&phc).map_err(|_| {
                        ConfigError::invalid(format!("{key}.passwordHash"), "not a PHC string")
                    })?;
                    if parsed.algorithm.as_str() != "argon2id" {
                        return Err(ConfigError::invalid(
                            format!("{key}.passwordHash"),
                            "must be an argon2id hash",
                        ));
                    }
                    let params = Params::try_from(&parsed).map_err(|_| {
                        ConfigError::invalid(
                            format!("{key}.passwordHash"),
                            "invalid argon2 parameters",
                        )
                    })?;
                    dummy_params.get_or_insert(params);
                    phc
                }
                Password::Plain(p) => {
                    if p.is_empty() {
                        return Err(ConfigError::invalid(
                            format!("{key}.password"),
                            "must not be empty",
                        ));
                    }
                    tracing::warn!(
                        user = %u.username,
                        "PLAINTEXT PASSWORD in the configuration for a Basic user: it is hashed in memory, \
                         but anyone who can read the configuration has it. Store an argon2id hash instead."
                    );
                    let phc = hash_password(p.expose(), self.params.clone())?;
                    dummy_params.get_or_insert(self.params.clone().unwrap_or_default());
                    phc
                }
            };
            let principal = Principal::new(
                u.principal.unwrap_or_else(|| u.username.clone()),
                AuthMethod::Basic,
            )
            .with_credential_id(u.username.clone())
            .with_scopes(u.scopes);
            if users
                .insert(
                    u.username.clone(),
                    UserRecord {
                        phc: phc.into(),
                        principal,
                    },
                )
                .is_some()
            {
                return Err(ConfigError::invalid(
                    format!("{key}.username"),
                    "duplicate user",
                ));
            }
        }
        let mut filler = [0u8; 24];
        rand::rng().fill(&mut filler);
        let dummy = hash_password(&hex::encode(filler), dummy_params)?;
        let n = self
            .max_concurrent
            .unwrap_or(DEFAULT_MAX_CONCURRENT_VERIFICATIONS);
        if n == 0 {
            return Err(ConfigError::invalid(
                "auth.basic.maxConcurrent",
                "must be positive",
            ));
        }
        let capacity = self.cache_capacity.unwrap_or(DEFAULT_CACHE_CAPACITY);
        let ttl = self.cache_max_ttl.unwrap_or(DEFAULT_CACHE_MAX_TTL);
        let cache = if capacity > 0 && ttl.as_secs() > 0 {
            let mut key = [0u8; 32];
            rand::rng().fill(&mut key);
            let mac = Hmac::<Sha256>::new_from_slice(&key)
                .map_err(|_| ConfigError::invalid("auth.basic", "HMAC key"))?;
            Some(Arc::new(Verified {
                mac,
                map: VerifiedCache::new(capacity, ttl),
            }))
        } else {
            None
        };
        Ok(BasicAuthenticator {
            users: Arc::new(users),
            dummy: dummy.into(),
            permits: Arc::new(Semaphore::new(n)),
            queued: Arc::new(AtomicUsize::new(0)),
            max_queued: self.max_queued.unwrap_or(DEFAULT_MAX_QUEUED_VERIFICATIONS),
            cache,
        })
    }
}

fn verify(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

impl BasicAuthenticator {
    /// A builder.
    pub fn builder() -> BasicAuthenticatorBuilder {
        BasicAuthenticatorBuilder::default()
    }

    /// Verifies a user name and password: from the cache when the same pair verified
    /// recently, else with Argon2 on the blocking pool (when in a Tokio runtime).
    pub async fn verify(&self, username: &str, password: SecretString) -> Outcome {
        match self.lookup(username, &password) {
            Ok(p) => Outcome::Authenticated(p),
            Err(digest) => self.verify_slow(username, password, digest).await,
        }
    }

    /// The cached principal of this pair, else its cache key (`None` without a cache).
    fn lookup(
        &self,
        username: &str,
        password: &SecretString,
    ) -> Result<Principal, Option<[u8; 32]>> {
        let Some(c) = &self.cache else {
            return Err(None);
        };
        let digest = c.digest(username, password.expose());
        c.map.get(&digest, 0, now_unix()).ok_or(Some(digest))
    }

    /// The Argon2 verification; a success is cached under `digest`.
    async fn verify_slow(
        &self,
        username: &str,
        password: SecretString,
        digest: Option<[u8; 32]>,
    ) -> Outcome {
        let (phc, principal) = match self.users.get(username) {
            Some(u) => (Arc::clone(&u.phc), Some(u.principal.clone())),
            None => (Arc::clone(&self.dummy), None),
        };
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(p) => p,
            Err(TryAcquireError::Closed) => {
                return Outcome::Failed(Failure::unavailable(
                    Scheme::Basic,
                    "basic verifier closed",
                ));
            }
            Err(TryAcquireError::NoPermits) => {
                // Every verifier is busy: wait in a bounded queue, or be refused at once.
                let slot = QueueSlot(Arc::clone(&self.queued));
                if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queued {
                    drop(slot);
                    return Outcome::Failed(Failure::unavailable(
                        Scheme::Basic,
                        "basic: verification queue full",
                    ));
                }
                let Ok(p) = Arc::clone(&self.permits).acquire_owned().await else {
                    return Outcome::Failed(Failure::unavailable(
                        Scheme::Basic,
                        "basic verifier closed",
                    ));
                };
                drop(slot);
                p
            }
        };
        let ok = match tokio::runtime::Handle::try_current() {
            // The permit moves into the task: it is held until the verification ends, even
            // if the request is dropped meanwhile.
            Ok(handle) => handle
                .spawn_blocking(move || {
                    let _permit = permit;
                    verify(&phc, password.expose())
                })
                .await
                .unwrap_or(false),
            Err(_) => verify(&phc, password.expose()),
        };
        match (ok, principal) {
            (true, Some(p)) => {
                if let (Some(c), Some(digest)) = (&self.cache, digest) {
                    c.map.insert(digest, p.clone(), None, 0, now_unix());
                }
                Outcome::Authenticated(p)
            }
            _ => Outcome::Failed(Failure::invalid(
                Scheme::Basic,
                "basic: invalid user name or password",
            )),
        }
    }

    /// How many verified user name and password pairs are cached.
    pub fn cached_credentials(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.map.len())
    }
}

impl Authenticator for BasicAuthenticator {
    fn scheme(&self) -> Scheme {
        Scheme::Basic
    }

    fn authenticate<'a>(&'a self, req: &'a Parts) -> AuthFuture<'a> {
        match credentials::basic_credentials(&req.headers) {
            Ok(None) => AuthFuture::Ready(Outcome::NoCredential),
            Err(e) => AuthFuture::Ready(crate::api_key::malformed(Scheme::Basic, e)),
            // A cached pair is answered at once, without a boxed future.
            Ok(Some(c)) => match self.lookup(&c.username, &c.password) {
                Ok(p) => AuthFuture::Ready(Outcome::Authenticated(p)),
                Err(digest) => AuthFuture::Pending(Box::pin(async move {
                    self.verify_slow(&c.username, c.password, digest).await
                })),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Params {
        Params::new(256, 1, 1, None).unwrap()
    }

    #[tokio::test]
    async fn phc_and_plaintext_users() {
        let phc = hash_password("s3cret:with:colons", Some(small())).unwrap();
        let b = BasicAuthenticator::builder()
            .argon2_params(small())
            .user(BasicUser::phc("alice", phc.clone()).scopes(["a"]))
            .user(BasicUser::plaintext("bob", "plain-pass"))
            .build()
            .unwrap();
        assert!(
            matches!(b.verify("alice", "s3cret:with:colons".into()).await, Outcome::Authenticated(p) if p.has_scope("a"))
        );
        assert!(
            matches!(b.verify("bob", "plain-pass".into()).await, Outcome::Authenticated(p) if p.id() == "bob")
        );
        assert!(matches!(
            b.verify("alice", "wrong".into()).await,
            Outcome::Failed(_)
        ));
        let unknown = b.verify("mallory", "s3cret:with:colons".into()).await;
        let wrong = b.verify("alice", "nope".into()).await;
        assert_eq!(
            unknown, wrong,
            "unknown user and wrong password look the same"
        );
        let dbg = format!("{b:?}");
        assert!(!dbg.contains(&phc) && !dbg.contains("plain-pass"));
        assert!(!format!("{:?}", BasicUser::plaintext("x", "plain-pass")).contains("plain-pass"));
    }

    fn alice_and_bob(capacity: Option<usize>) -> BasicAuthenticator {
        let mut b = BasicAuthenticator::builder()
            .argon2_params(small())
            .max_concurrent(1)
            .user(BasicUser::plaintext("alice", "alice-pass").scopes(["a"]))
            .user(BasicUser::plaintext("bob", "bob-pass"));
        if let Some(c) = capacity {
            b = b.cache_capacity(c);
        }
        b.build().unwrap()
    }

    /// Verifies with the only verification permit held elsewhere: only a cache hit can
    /// answer; a verification waits for the permit (`None` after 200 ms).
    async fn without_argon2(b: &BasicAuthenticator, user: &str, pass: &str) -> Option<Outcome> {
        let _held = Arc::clone(&b.permits).try_acquire_owned().unwrap();
        tokio::time::timeout(Duration::from_millis(200), b.verify(user, pass.into()))
            .await
            .ok()
    }

    #[tokio::test]
    async fn a_verified_pair_is_served_from_the_cache() {
        let b = alice_and_bob(None);
        assert_eq!(b.cached_credentials(), 0);
        assert!(without_argon2(&b, "alice", "alice-pass").await.is_none());
        assert!(matches!(
            b.verify("alice", "alice-pass".into()).await,
            Outcome::Authenticated(_)
        ));
        assert_eq!(b.cached_credentials(), 1);
        let hit = without_argon2(&b, "alice", "alice-pass").await;
        assert!(
            matches!(&hit, Some(Outcome::Authenticated(p))
                if p.id() == "alice" && p.has_scope("a")),
            "{hit:?}"
        );
        // Anything else is verified again, not taken from alice's entry.
        for (user, pass) in [
            ("alice", "wrong"),
            ("alice", "alice-pas"),
            ("alice", "alice-pass "),
            ("bob", "alice-pass"),
            ("alicealice-pass", ""),
            ("", "alicealice-pass"),
        ] {
            assert!(
                without_argon2(&b, user, pass).await.is_none(),
                "{user:?} / {pass:?} was not verified"
            );
        }
        // A clone shares the cache.
        assert!(
            without_argon2(&b.clone(), "alice", "alice-pass")
                .await
                .is_some()
        );
        // Through `Authenticator`: a hit is answered at once, anything else is verified.
        use base64::Engine as _;
        let parts = |pair: &str| {
            let v = base64::engine::general_purpose::STANDARD.encode(pair);
            http::Request::get("/")
                .header("authorization", format!("Basic {v}"))
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        let hit = parts("alice:alice-pass");
        assert!(matches!(
            b.authenticate(&hit),
            AuthFuture::Ready(Outcome::Authenticated(_))
        ));
        let miss = parts("alice:alice-pass2");
        assert!(matches!(b.authenticate(&miss), AuthFuture::Pending(_)));
    }

    #[tokio::test]
    async fn the_cache_can_be_turned_off() {
        for b in [
            alice_and_bob(Some(0)),
            BasicAuthenticator::builder()
                .argon2_params(small())
                .max_concurrent(1)
                .cache_max_ttl(Duration::from_millis(900))
                .user(BasicUser::plaintext("alice", "alice-pass"))
                .build()
                .unwrap(),
        ] {
            assert!(matches!(
                b.verify("alice", "alice-pass".into()).await,
                Outcome::Authenticated(_)
            ));
            assert_eq!(b.cached_credentials(), 0);
            assert!(without_argon2(&b, "alice", "alice-pass").await.is_none());
            assert!(format!("{b:?}").contains("cache: None"));
        }
    }

    /// Attack: a flood of wrong passwords, for real and unknown users, adds nothing to
    /// the cache; and valid pairs never hold more than the capacity.
    #[tokio::test]
    async fn failures_are_not_cached_and_the_cache_is_bounded() {
        let b = alice_and_bob(None);
        for i in 0..200 {
            let user = if i % 2 == 0 { "alice" } else { "mallory" };
            let o = b.verify(user, format!("guess-{i}").into()).await;
            assert!(matches!(o, Outcome::Failed(_)));
        }
        assert_eq!(b.cached_credentials(), 0);

        let users: Vec<BasicUser> = (0..100)
            .map(|i| BasicUser::plaintext(format!("u{i}"), format!("p{i}")))
            .collect();
        let b = BasicAuthenticator::builder()
            .argon2_params(small())
            .cache_capacity(32)
            .users(users)
            .build()
            .unwrap();
        for i in 0..100 {
            let o = b.verify(&format!("u{i}"), format!("p{i}").into()).await;
            assert!(matches!(o, Outcome::Authenticated(_)));
        }
        assert!(b.cached_credentials() <= 32, "{}", b.cached_credentials());
        assert!(b.cached_credentials() > 0);
    }

    #[test]
    fn config_errors() {
        let e = BasicAuthenticator::builder()
            .user(BasicUser::phc("a", "not-a-phc"))
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("PHC"));
        let bcrypt_like =
            "$argon2i$v=19$m=256,t=1,p=1$c29tZXNhbHQ$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A";
        let e = BasicAuthenticator::builder()
            .user(BasicUser::phc("a", bcrypt_like))
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("argon2id"));
        let e = BasicAuthenticator::builder()
            .user(BasicUser::plaintext("a:b", "x"))
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("colon"));
        // A blank user name or principal names nobody.
        for u in [
            BasicUser::plaintext("", "x"),
            BasicUser::plaintext("   ", "x"),
            BasicUser::plaintext("\u{3000}", "x"),
            BasicUser::plaintext("a", "x").principal(" "),
            BasicUser::plaintext("a", "x").principal(""),
        ] {
            let e = BasicAuthenticator::builder().user(u).build().unwrap_err();
            assert!(e.to_string().contains("only spaces"), "{e}");
        }
    }
}
