//! HTTP Basic (RFC 7617) with Argon2id password hashes.
//!
//! Users are configured with PHC strings (`$argon2id$v=19$m=...`), the format the
//! `argon2` crate and most tools produce ([`hash_password`] makes one). A plaintext
//! password is accepted only with a loud warning at build time, and is hashed then.
//!
//! Verification runs on the blocking thread pool (an Argon2 verification takes tens of
//! milliseconds by design and must not stall the executor), bounded by a semaphore so a
//! flood of Basic attempts cannot take every blocking thread. An unknown user is verified
//! against a dummy hash made with the same parameters, so the work, and the time, is the
//! same whether the user exists or not; the failure detail does not say which it was.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, Params};
use http::request::Parts;
use mcp_core::{AuthMethod, Principal};
use rand::Rng;
use tokio::sync::Semaphore;

use crate::authenticator::{AuthFuture, Authenticator, Failure, Outcome, Scheme};
use crate::credentials;
use crate::error::ConfigError;
use crate::secret::SecretString;

/// The default bound on concurrent Argon2 verifications.
pub const DEFAULT_MAX_CONCURRENT_VERIFICATIONS: usize = 4;

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
}

impl fmt::Debug for BasicAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut users: Vec<&str> = self.users.keys().map(String::as_str).collect();
        users.sort_unstable();
        f.debug_struct("BasicAuthenticator")
            .field("users", &users)
            .finish_non_exhaustive()
    }
}

/// Builder of [`BasicAuthenticator`].
#[derive(Debug, Default)]
pub struct BasicAuthenticatorBuilder {
    users: Vec<BasicUser>,
    params: Option<Params>,
    max_concurrent: Option<usize>,
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
            if u.username.is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.username"),
                    "must not be empty",
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
        Ok(BasicAuthenticator {
            users: Arc::new(users),
            dummy: dummy.into(),
            permits: Arc::new(Semaphore::new(n)),
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

    /// Verifies a user name and password (on the blocking pool when in a Tokio runtime).
    pub async fn verify(&self, username: &str, password: SecretString) -> Outcome {
        let (phc, principal) = match self.users.get(username) {
            Some(u) => (Arc::clone(&u.phc), Some(u.principal.clone())),
            None => (Arc::clone(&self.dummy), None),
        };
        let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
            return Outcome::Failed(Failure::unavailable(Scheme::Basic, "basic verifier closed"));
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
            (true, Some(p)) => Outcome::Authenticated(p),
            _ => Outcome::Failed(Failure::invalid(
                Scheme::Basic,
                "basic: invalid user name or password",
            )),
        }
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
            Ok(Some(c)) => AuthFuture::Pending(Box::pin(async move {
                self.verify(&c.username, c.password).await
            })),
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
    }
}
