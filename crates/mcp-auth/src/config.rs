//! [`AuthConfig`]: the gateway's `auth:` section (the seeds' keys, camelCase), turned
//! into an [`AuthLayer`] by [`AuthConfig::build`].
//!
//! ```
//! use mcp_auth::AuthConfig;
//! let yaml_as_json = r#"{
//!   "enabled": true,
//!   "mode": "apikey",
//!   "apiKey": "Abc123!@#Xyz789!@#Abc123!@#"
//! }"#;
//! let cfg: AuthConfig = serde_json::from_str(yaml_as_json).unwrap();
//! let layer = cfg.build().unwrap();
//! assert!(!format!("{cfg:?} {layer:?}").contains("Abc123"));
//! ```
//!
//! Modes: `apikey`, `bearer` (static `bearerToken`s, and JWTs when `jwtSecret` or `jwt`
//! is set), `basic`, and our additions `jwt` and `mtls`; several modes as a list
//! (`["mtls", "jwt"]`) or a comma-separated string (`"apikey,jwt"`), tried in that order.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use mcp_core::{AuthMethod, PrincipalSources};
use serde::{Deserialize, Deserializer};

use crate::api_key::{ApiKeyAuthenticator, CredentialEntry};
use crate::basic::{BasicAuthenticator, BasicUser};
use crate::bearer::BearerTokenAuthenticator;
use crate::error::ConfigError;
use crate::jwt::{
    ALGORITHMS_RULE, JwtAuthenticator, JwtIssuer, parse_algorithm, shared_secret_problem,
};
use crate::layer::{AuthLayer, AuthLayerBuilder};
use crate::metadata::ProtectedResourceMetadata;
use crate::mtls::{ClientCertAuthenticator, IdentityField};
use crate::secret::{SecretBytes, SecretString};
use crate::store::SecretStore;

/// An authentication mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `apikey`: API keys in a header.
    ApiKey,
    /// `bearer`: static bearer tokens, plus JWTs when configured.
    Bearer,
    /// `basic`: HTTP Basic.
    Basic,
    /// `jwt`: JWT bearer tokens only.
    Jwt,
    /// `mtls`: TLS client certificates.
    Mtls,
}

impl std::str::FromStr for Mode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "apikey" | "api_key" | "api-key" => Ok(Self::ApiKey),
            "bearer" => Ok(Self::Bearer),
            "basic" => Ok(Self::Basic),
            "jwt" => Ok(Self::Jwt),
            "mtls" | "client_cert" | "clientcert" => Ok(Self::Mtls),
            _ => Err(ConfigError::invalid(
                "auth.mode",
                "must be apikey, bearer, basic, jwt or mtls (or a list of them)",
            )),
        }
    }
}

/// The modes, in the order they are tried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Modes(pub Vec<Mode>);

impl<'de> Deserialize<'de> for Modes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let names: Vec<String> = match Raw::deserialize(d)? {
            Raw::One(s) => s.split(',').map(str::to_owned).collect(),
            Raw::Many(v) => v,
        };
        names
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.parse::<Mode>().map_err(serde::de::Error::custom))
            .collect::<Result<Vec<_>, _>>()
            .map(Modes)
    }
}

/// A header name from configuration, as written (not trimmed): an error naming `key`
/// when it is not a header token.
pub(crate) fn header_name(name: &str, key: &str) -> Result<http::HeaderName, ConfigError> {
    http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        ConfigError::invalid(
            key,
            "must be a header name (an RFC 9110 token: letters, digits and !#$%&'*+-.^_`|~; no spaces, colon or empty name)",
        )
    })
}

fn rfc3339<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| {
        time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
            .map(SystemTime::from)
            .map_err(|_| serde::de::Error::custom("expected an RFC 3339 date-time"))
    })
    .transpose()
}

/// One API key or static bearer token in configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyConfig {
    /// The key's id (recorded in audit, never secret).
    pub id: String,
    /// The key (plaintext; checked against the policy).
    pub key: Option<SecretString>,
    /// Or its SHA-256, 64 hex digits.
    pub sha256: Option<String>,
    /// The principal id (default: the id).
    pub principal: Option<String>,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// Not valid before (RFC 3339).
    #[serde(deserialize_with = "rfc3339")]
    pub not_before: Option<SystemTime>,
    /// Not valid from (RFC 3339).
    #[serde(deserialize_with = "rfc3339")]
    pub expires_at: Option<SystemTime>,
}

impl KeyConfig {
    fn entry(&self, key: &str) -> Result<CredentialEntry, ConfigError> {
        let mut e = match (&self.key, &self.sha256) {
            (Some(k), None) => CredentialEntry::new(self.id.clone(), k.clone()),
            (None, Some(h)) => CredentialEntry::sha256_hex(self.id.clone(), h.clone()),
            _ => {
                return Err(ConfigError::invalid(
                    key,
                    "exactly one of key and sha256 is required",
                ));
            }
        };
        if let Some(p) = &self.principal {
            e = e.principal(p.clone());
        }
        e = e.scopes(self.scopes.clone());
        if let Some(t) = self.not_before {
            e = e.not_before(t);
        }
        if let Some(t) = self.expires_at {
            e = e.expires_at(t);
        }
        Ok(e)
    }
}

/// One Basic user in configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct UserConfig {
    /// The user name.
    pub username: String,
    /// An Argon2id PHC string (preferred). Hidden from `Debug`: a hash can be attacked
    /// offline.
    pub password_hash: Option<SecretString>,
    /// A plaintext password (accepted with a warning).
    pub password: Option<SecretString>,
    /// The principal id (default: the user name).
    pub principal: Option<String>,
    /// Scopes granted.
    pub scopes: Vec<String>,
}

impl UserConfig {
    fn user(&self, key: &str) -> Result<BasicUser, ConfigError> {
        let u = match (&self.password_hash, &self.password) {
            (Some(h), None) => BasicUser::phc(self.username.clone(), h.expose()),
            (None, Some(p)) => BasicUser::plaintext(self.username.clone(), p.clone()),
            _ => {
                return Err(ConfigError::invalid(
                    key,
                    "exactly one of passwordHash and password is required",
                ));
            }
        };
        let u = u.scopes(self.scopes.clone());
        Ok(match &self.principal {
            Some(p) => u.principal(p.clone()),
            None => u,
        })
    }
}

/// One JWT issuer in configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtIssuerConfig {
    /// The `iss` (any when absent).
    pub issuer: Option<String>,
    /// Accepted audiences.
    pub audiences: Vec<String>,
    /// Allowed algorithms.
    pub algorithms: Vec<String>,
    /// A shared secret (HMAC), as text: its UTF-8 bytes are the key.
    pub secret: Option<SecretString>,
    /// A shared secret (HMAC) as standard base64 of its bytes (`secretBase64`), for a
    /// secret that is not text (from a KMS, `openssl rand -base64 64`). At most one of
    /// `secret` and `secretBase64`.
    pub secret_base64: Option<SecretString>,
    /// The HMAC algorithm of `secret` (default HS256).
    pub secret_algorithm: Option<String>,
    /// A PEM public key file.
    pub public_key_file: Option<PathBuf>,
    /// The algorithm of `publicKeyFile` (required with it).
    pub public_key_algorithm: Option<String>,
    /// A local JWKS file.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL.
    pub jwks_url: Option<String>,
    /// JWKS TTL in seconds.
    pub jwks_ttl_seconds: Option<u64>,
    /// Minimum seconds between JWKS fetches.
    pub jwks_refresh_interval_seconds: Option<u64>,
    /// JWKS fetch timeout in seconds.
    pub jwks_timeout_seconds: Option<u64>,
    /// Allow an `http://` JWKS URL.
    pub allow_http_jwks: bool,
    /// A PEM CA bundle trusted for the JWKS URL instead of the Mozilla roots.
    pub jwks_ca_file: Option<PathBuf>,
    /// Leeway in seconds for `exp` / `nbf`.
    pub leeway_seconds: Option<u64>,
    /// Whether `exp` is required (default true).
    pub require_exp: Option<bool>,
    /// Extra required claims.
    pub required_claims: Vec<String>,
    /// The claim naming the principal (default `sub`).
    pub principal_claim: Option<String>,
    /// Accepted `typ` values (default `[at+jwt, JWT]`).
    pub token_types: Option<Vec<String>>,
    /// Whether tokens without `typ` are accepted (default true).
    pub allow_untyped: Option<bool>,
    /// Whether `exp`, `nbf`, `iat` may hold fractions of a second (default false).
    pub allow_fractional_dates: bool,
}

impl JwtIssuerConfig {
    fn issuer(&self, key: &str) -> Result<JwtIssuer, ConfigError> {
        let mut i = match &self.issuer {
            Some(iss) => JwtIssuer::new(iss.clone()),
            None => JwtIssuer::any(),
        };
        i = i.audiences(self.audiences.clone());
        if !self.algorithms.is_empty() {
            let algs = self
                .algorithms
                .iter()
                .map(|a| {
                    parse_algorithm(a).map_err(|_| {
                        ConfigError::invalid(format!("{key}.algorithms"), "unknown algorithm")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            i = i.algorithms(algs);
        }
        let algorithm = |name: &str, field: &str| {
            parse_algorithm(name)
                .map_err(|_| ConfigError::invalid(format!("{key}.{field}"), ALGORITHMS_RULE))
        };
        if let Some(s) = shared_secret(
            self.secret.as_ref(),
            self.secret_base64.as_ref(),
            &format!("{key}.secret"),
            &format!("{key}.secretBase64"),
        )? {
            let alg = algorithm(
                self.secret_algorithm.as_deref().unwrap_or("HS256"),
                "secretAlgorithm",
            )?;
            i = i.hmac_secret(alg, s);
        }
        if let Some(p) = &self.public_key_file {
            let alg = self.public_key_algorithm.as_deref().ok_or_else(|| {
                ConfigError::invalid(
                    format!("{key}.publicKeyAlgorithm"),
                    "required with publicKeyFile",
                )
            })?;
            i = i.public_key_pem_file(algorithm(alg, "publicKeyAlgorithm")?, p.clone());
        }
        if let Some(p) = &self.jwks_file {
            i = i.jwks_file(p.clone());
        }
        if let Some(u) = &self.jwks_url {
            i = i.jwks_url(u.clone()).allow_http_jwks(self.allow_http_jwks);
        }
        if let Some(p) = &self.jwks_ca_file {
            let pem = std::fs::read(p).map_err(|source| ConfigError::Io {
                key: format!("{key}.jwksCaFile"),
                path: p.display().to_string(),
                source,
            })?;
            i = i.jwks_root_certificates_pem(pem);
        }
        if let Some(s) = self.jwks_ttl_seconds {
            i = i.jwks_ttl(Duration::from_secs(s));
        }
        if let Some(s) = self.jwks_refresh_interval_seconds {
            i = i.jwks_refresh_interval(Duration::from_secs(s));
        }
        if let Some(s) = self.jwks_timeout_seconds {
            i = i.jwks_timeout(Duration::from_secs(s));
        }
        if let Some(s) = self.leeway_seconds {
            i = i.leeway(Duration::from_secs(s));
        }
        if let Some(r) = self.require_exp {
            i = i.require_exp(r);
        }
        i = i.require_claims(self.required_claims.clone());
        if let Some(c) = &self.principal_claim {
            i = i.principal_claim(c.clone());
        }
        if let Some(t) = &self.token_types {
            i = i.token_types(t.clone());
        }
        if let Some(u) = self.allow_untyped {
            i = i.allow_untyped(u);
        }
        Ok(i.allow_fractional_dates(self.allow_fractional_dates))
    }
}

/// JWT settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtConfig {
    /// The issuers.
    pub issuers: Vec<JwtIssuerConfig>,
    /// Verified-token cache capacity.
    pub cache_capacity: Option<usize>,
    /// Longest time in seconds a verified token is served from the cache.
    pub cache_max_ttl_seconds: Option<u64>,
    /// Longest token accepted, in bytes.
    pub max_token_bytes: Option<usize>,
}

/// Basic settings (the users are `username` / `password` and `users`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct BasicConfig {
    /// The most Argon2 verifications running at once (default 4).
    pub max_concurrent: Option<usize>,
    /// The most verifications waiting for one of them (default 16); past it an attempt
    /// is refused with 503 and `Retry-After`. 0: never wait.
    pub max_queued: Option<usize>,
    /// Verified-credential cache capacity (default 1,024; 0 turns it off).
    pub cache_capacity: Option<usize>,
    /// Longest time in seconds a verified user name and password are served from the
    /// cache (default 300).
    pub cache_max_ttl_seconds: Option<u64>,
}

/// Client certificate settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct MtlsConfig {
    /// Which field names the principal.
    pub identity: IdentityField,
    /// Allowed SHA-256 fingerprints.
    pub allow_fingerprints: Vec<String>,
    /// Allowed identities: the value `identity` chooses (a SPIFFE ID, a common name, the
    /// first DNS name), which becomes the principal; another SAN of the certificate does
    /// not count.
    pub allow_sans: Vec<String>,
    /// Scopes per certificate identity (`spiffe://td/x`, or `mtls:spiffe://td/x`).
    pub scopes: HashMap<String, Vec<String>>,
    /// Scopes of principals without an entry.
    pub default_scopes: Vec<String>,
}

/// The `auth:` section. `Debug` never shows a credential (they are [`SecretString`]s).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthConfig {
    /// Whether authentication is on. Off: every request is anonymous.
    pub enabled: bool,
    /// The modes, tried in order.
    pub mode: Modes,
    /// The challenge realm (default `mcp`).
    pub realm: Option<String>,
    /// One API key (the seeds' `apiKey`), id `apiKey`.
    pub api_key: Option<SecretString>,
    /// The API key header (default `X-API-Key`). Written as is: a name that is not a
    /// header token (spaces, a colon, empty) is an error, not trimmed.
    pub api_key_header: Option<String>,
    /// More request headers that carry credentials (read by something other than this
    /// layer, e.g. a token the upstream would take): treated like the defaults
    /// (stripped, masked, redacted; see [`AuthLayer::credential_headers`]).
    pub credential_headers: Vec<String>,
    /// More API keys.
    pub api_keys: Vec<KeyConfig>,
    /// One static bearer token (the seeds' `bearerToken`), id `bearerToken`.
    pub bearer_token: Option<SecretString>,
    /// More static bearer tokens.
    pub bearer_tokens: Vec<KeyConfig>,
    /// The Basic user name (the seeds' `username`).
    pub username: Option<String>,
    /// Its plaintext password (the seeds' `password`; accepted with a warning).
    pub password: Option<SecretString>,
    /// Its Argon2id PHC hash (preferred to `password`).
    pub password_hash: Option<SecretString>,
    /// More Basic users.
    pub users: Vec<UserConfig>,
    /// Basic settings: verification bound and verified-credential cache.
    pub basic: Option<BasicConfig>,
    /// A JWT shared secret (the seeds' `jwtSecret`), as text: its UTF-8 bytes are the key.
    pub jwt_secret: Option<SecretString>,
    /// A JWT shared secret as standard base64 of its bytes (`jwtSecretBase64`), for a
    /// secret that is not text (from a KMS, `openssl rand -base64 64`). At most one of
    /// `jwtSecret` and `jwtSecretBase64`.
    pub jwt_secret_base64: Option<SecretString>,
    /// Its algorithm (the seeds' `jwtAlgorithm`, default HS256).
    pub jwt_algorithm: Option<String>,
    /// Full JWT settings.
    pub jwt: Option<JwtConfig>,
    /// Client certificate settings.
    pub mtls: Option<MtlsConfig>,
    /// Scopes every principal must hold.
    pub required_scopes: Vec<String>,
    /// Protected resource metadata (MCP authorization): tokens must name
    /// `resource.resource` in `aud`, and challenges point at the metadata.
    pub resource: Option<ProtectedResourceMetadata>,
}

impl AuthConfig {
    /// Builds the layer.
    pub fn build(&self) -> Result<AuthLayer, ConfigError> {
        self.build_with_store(None)
    }

    /// Every request header that carries a credential under this configuration, lower
    /// case, each once: the defaults, `apiKeyHeader` (or `X-API-Key`) and
    /// `credentialHeaders`, whether authentication is enabled or not (the same list as
    /// [`AuthLayer::credential_headers`] of the layer built from it, for a caller that
    /// has no layer, with authentication off). An invalid name is an error naming the
    /// key.
    pub fn credential_header_names(&self) -> Result<Vec<http::HeaderName>, ConfigError> {
        let mut out = mcp_core::headers::default_credential_headers();
        let api = self
            .api_key_header
            .as_deref()
            .unwrap_or(crate::api_key::DEFAULT_API_KEY_HEADER);
        let mut push = |name: &str, key: &str| -> Result<(), ConfigError> {
            let h = header_name(name, key)?;
            if !out.contains(&h) {
                out.push(h);
            }
            Ok(())
        };
        push(api, "auth.apiKeyHeader")?;
        for h in &self.credential_headers {
            push(h, "auth.credentialHeaders")?;
        }
        Ok(out)
    }

    /// What the configured modes can produce, to resolve the principal entries of policy
    /// rules and per-principal limits ([`PrincipalSources::resolve`]): the configured API
    /// key and bearer token ids (any id when `with_store`, whose keys change at run time),
    /// the Basic users, each JWT issuer, client certificates; [`PrincipalSources::anonymous`]
    /// when authentication is off.
    ///
    /// ```
    /// use mcp_auth::AuthConfig;
    /// use mcp_core::PrincipalEntry;
    /// let cfg: AuthConfig = serde_json::from_value(serde_json::json!({
    ///     "enabled": true, "mode": ["apikey", "mtls"],
    ///     "apiKeys": [{"id": "ops", "key": "Abc123!@#Xyz789!@#Abc123!@#"}]
    /// })).unwrap();
    /// let sources = cfg.principal_sources(false);
    /// assert!(sources.resolve("ops").is_err(), "a certificate CN could be ops too");
    /// assert_eq!(sources.resolve("apikey:ops"), Ok(PrincipalEntry::Qualified("apikey:ops".into())));
    /// ```
    pub fn principal_sources(&self, with_store: bool) -> PrincipalSources {
        if !self.enabled {
            return PrincipalSources::anonymous();
        }
        let keys = |single: &Option<SecretString>, name: &str, list: &[KeyConfig]| {
            single
                .as_ref()
                .map(|_| name.to_owned())
                .into_iter()
                .chain(
                    list.iter()
                        .map(|k| k.principal.clone().unwrap_or_else(|| k.id.clone())),
                )
                .collect::<Vec<_>>()
        };
        let jwt = |mut s: PrincipalSources| {
            if self.jwt_secret.is_some() || self.jwt_secret_base64.is_some() {
                s = s.with_jwt_issuer(None);
            }
            for i in self.jwt.iter().flat_map(|j| &j.issuers) {
                s = s.with_jwt_issuer(i.issuer.clone());
            }
            s
        };
        let mut s = PrincipalSources::new();
        for mode in &self.mode.0 {
            s = match mode {
                Mode::ApiKey if with_store => s.with_any_id(AuthMethod::ApiKey),
                Mode::ApiKey => s.with_ids(
                    AuthMethod::ApiKey,
                    keys(&self.api_key, "apiKey", &self.api_keys),
                ),
                Mode::Bearer => {
                    let s = if with_store {
                        s.with_any_id(AuthMethod::BearerToken)
                    } else if self.bearer_token.is_some() || !self.bearer_tokens.is_empty() {
                        s.with_ids(
                            AuthMethod::BearerToken,
                            keys(&self.bearer_token, "bearerToken", &self.bearer_tokens),
                        )
                    } else {
                        s
                    };
                    jwt(s)
                }
                Mode::Basic => s.with_ids(
                    AuthMethod::Basic,
                    self.username.iter().cloned().chain(
                        self.users
                            .iter()
                            .map(|u| u.principal.clone().unwrap_or_else(|| u.username.clone())),
                    ),
                ),
                Mode::Jwt => jwt(s),
                Mode::Mtls => s.with_any_id(AuthMethod::ClientCertificate),
            };
        }
        s
    }

    /// Builds the layer; API keys and bearer tokens of `store` are accepted too.
    pub fn build_with_store(&self, store: Option<SecretStore>) -> Result<AuthLayer, ConfigError> {
        if !self.enabled {
            return Ok(AuthLayer::disabled());
        }
        if self.mode.0.is_empty() {
            return Err(ConfigError::invalid(
                "auth.mode",
                "required when auth.enabled is true",
            ));
        }
        if let Some(r) = &self.resource {
            r.validate()?;
        }
        let mut b: AuthLayerBuilder =
            AuthLayer::builder().credential_headers(self.credential_header_names()?);
        if let Some(realm) = &self.realm {
            b = b.realm(realm.clone());
        }
        b = b.require_scopes(self.required_scopes.clone());
        if let Some(r) = &self.resource {
            b = b.resource_metadata(r.metadata_url());
            if self.required_scopes.is_empty() && !r.scopes_supported.is_empty() {
                b = b.challenge_scopes(r.scopes_supported.clone());
            }
        }
        let mut seen = std::collections::HashSet::new();
        for mode in &self.mode.0 {
            if !seen.insert(*mode) {
                return Err(ConfigError::invalid("auth.mode", "a mode is listed twice"));
            }
            b = match mode {
                Mode::ApiKey => b.authenticator(self.api_key_authenticator(store.clone())?),
                Mode::Basic => b.authenticator(self.basic_authenticator()?),
                Mode::Mtls => b.authenticator(self.mtls_authenticator()?),
                Mode::Jwt => b.authenticator(self.jwt_authenticator()?.ok_or_else(|| {
                    ConfigError::invalid("auth.jwt", "mode jwt needs jwtSecret or jwt.issuers")
                })?),
                Mode::Bearer => {
                    let statics = self.bearer_authenticator(store.clone())?;
                    let jwt = self.jwt_authenticator()?;
                    if statics.is_none() && jwt.is_none() {
                        return Err(ConfigError::invalid(
                            "auth.bearerToken",
                            "mode bearer needs bearerToken, bearerTokens, jwtSecret or jwt",
                        ));
                    }
                    if let Some(s) = statics {
                        b = b.authenticator(s);
                    }
                    if let Some(j) = jwt {
                        b = b.authenticator(j);
                    }
                    b
                }
            };
        }
        b.build()
    }

    fn api_key_authenticator(
        &self,
        store: Option<SecretStore>,
    ) -> Result<ApiKeyAuthenticator, ConfigError> {
        let mut a = ApiKeyAuthenticator::builder();
        if let Some(h) = &self.api_key_header {
            a = a.header(h.clone());
        }
        if let Some(k) = &self.api_key {
            a = a.key(CredentialEntry::new("apiKey", k.clone()));
        }
        for (i, k) in self.api_keys.iter().enumerate() {
            a = a.key(k.entry(&format!("auth.apiKeys[{i}]"))?);
        }
        if let Some(s) = store {
            a = a.store(s);
        }
        a.build().map_err(|e| match e {
            ConfigError::WeakApiKey { key, violation }
                if key == "auth.apiKeys[0].key" && self.api_key.is_some() =>
            {
                ConfigError::WeakApiKey {
                    key: "auth.apiKey".into(),
                    violation,
                }
            }
            e => e,
        })
    }

    fn bearer_authenticator(
        &self,
        store: Option<SecretStore>,
    ) -> Result<Option<BearerTokenAuthenticator>, ConfigError> {
        if self.bearer_token.is_none() && self.bearer_tokens.is_empty() && store.is_none() {
            return Ok(None);
        }
        let mut b = BearerTokenAuthenticator::builder();
        if let Some(t) = &self.bearer_token {
            b = b.token(CredentialEntry::new("bearerToken", t.clone()));
        }
        for (i, k) in self.bearer_tokens.iter().enumerate() {
            b = b.token(k.entry(&format!("auth.bearerTokens[{i}]"))?);
        }
        if let Some(s) = store {
            b = b.store(s);
        }
        b.build().map(Some)
    }

    fn basic_authenticator(&self) -> Result<BasicAuthenticator, ConfigError> {
        let mut b = BasicAuthenticator::builder();
        if let Some(u) = &self.username {
            let user = UserConfig {
                username: u.clone(),
                password_hash: self.password_hash.clone(),
                password: self.password.clone(),
                ..UserConfig::default()
            };
            b = b.user(user.user("auth.password")?);
        }
        for (i, u) in self.users.iter().enumerate() {
            b = b.user(u.user(&format!("auth.users[{i}]"))?);
        }
        if let Some(c) = &self.basic {
            if let Some(n) = c.max_concurrent {
                b = b.max_concurrent(n);
            }
            if let Some(n) = c.max_queued {
                b = b.max_queued(n);
            }
            if let Some(n) = c.cache_capacity {
                b = b.cache_capacity(n);
            }
            if let Some(s) = c.cache_max_ttl_seconds {
                b = b.cache_max_ttl(Duration::from_secs(s));
            }
        }
        b.build()
    }

    fn mtls_authenticator(&self) -> Result<ClientCertAuthenticator, ConfigError> {
        let c = self.mtls.clone().unwrap_or_default();
        let mut b = ClientCertAuthenticator::builder()
            .identity(c.identity)
            .default_scopes(c.default_scopes);
        for f in c.allow_fingerprints {
            b = b.allow_fingerprint(f);
        }
        for s in c.allow_sans {
            b = b.allow_san(s);
        }
        for (p, s) in c.scopes {
            b = b.scopes_for(p, s);
        }
        b.build()
    }

    fn jwt_authenticator(&self) -> Result<Option<JwtAuthenticator>, ConfigError> {
        let mut issuers = Vec::new();
        if let Some(secret) = shared_secret(
            self.jwt_secret.as_ref(),
            self.jwt_secret_base64.as_ref(),
            "auth.jwtSecret",
            "auth.jwtSecretBase64",
        )? {
            let alg = parse_algorithm(self.jwt_algorithm.as_deref().unwrap_or("HS256"))?;
            let secret_key = if self.jwt_secret.is_some() {
                "auth.jwtSecret"
            } else {
                "auth.jwtSecretBase64"
            };
            // Checked here so that the error names the seed's keys.
            if let Some(problem) = shared_secret_problem(alg, secret.len()) {
                let key = if problem.wrong_algorithm {
                    "auth.jwtAlgorithm"
                } else {
                    secret_key
                };
                return Err(ConfigError::invalid(key, problem.message));
            }
            issuers.push(
                JwtIssuer::any()
                    .hmac_secret(alg, secret)
                    .config_key(secret_key),
            );
        }
        let cfg = self.jwt.clone().unwrap_or_default();
        for (i, ic) in cfg.issuers.iter().enumerate() {
            let key = format!("auth.jwt.issuers[{i}]");
            issuers.push(ic.issuer(&key)?.config_key(key));
        }
        if issuers.is_empty() {
            return Ok(None);
        }
        let mut b = JwtAuthenticator::builder();
        for i in issuers {
            b = b.issuer(i);
        }
        if let Some(c) = cfg.cache_capacity {
            b = b.cache_capacity(c);
        }
        if let Some(s) = cfg.cache_max_ttl_seconds {
            b = b.cache_max_ttl(Duration::from_secs(s));
        }
        if let Some(m) = cfg.max_token_bytes {
            b = b.max_token_bytes(m);
        }
        if let Some(r) = &self.resource {
            b = b.resource(r.resource.clone());
        }
        b.build().map(Some)
    }
}

/// The shared secret given as text (`text_key`) or as base64 of its bytes (`b64_key`),
/// at most one of them. The error names the key, never the value.
fn shared_secret(
    text: Option<&SecretString>,
    b64: Option<&SecretString>,
    text_key: &str,
    b64_key: &str,
) -> Result<Option<SecretBytes>, ConfigError> {
    use base64::Engine as _;
    match (text, b64) {
        (None, None) => Ok(None),
        (Some(t), None) => Ok(Some(SecretBytes::from(t.clone()))),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.expose().trim())
            .map(|v| Some(SecretBytes::from(v)))
            .map_err(|_| {
                ConfigError::invalid(
                    b64_key,
                    "must be standard base64 (A-Z a-z 0-9 + / and = padding)",
                )
            }),
        (Some(_), Some(_)) => Err(ConfigError::invalid(
            b64_key,
            format!("give the secret once: {text_key} (text) or {b64_key} (bytes), not both"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &str = "Abc123!@#Xyz789!@#Abc123!@#";

    /// Shared secrets as base64 (bytes from a KMS): `jwtSecretBase64` and an issuer's
    /// `secretBase64`, exactly one of each pair, decoded before the length rule.
    #[test]
    fn jwt_secrets_accept_base64_bytes() {
        use base64::Engine as _;
        let raw: Vec<u8> = (0u8..40).map(|i| i.wrapping_mul(53) ^ 0xc3).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
        for cfg in [
            json!({"enabled": true, "mode": "jwt", "jwtSecretBase64": b64}),
            json!({"enabled": true, "mode": "jwt",
                   "jwt": {"issuers": [{"issuer": "https://i", "secretBase64": b64}]}}),
        ] {
            let c: AuthConfig = serde_json::from_value(cfg).unwrap();
            let dbg = format!("{c:?}");
            assert!(!dbg.contains(&b64), "{dbg}");
            c.build().unwrap();
        }
        // 24 bytes are too short for HS256, whatever their text form's length.
        let short = base64::engine::general_purpose::STANDARD.encode(&raw[..24]);
        let c: AuthConfig = serde_json::from_value(
            json!({"enabled": true, "mode": "jwt", "jwtSecretBase64": short}),
        )
        .unwrap();
        let e = c.build().unwrap_err();
        assert!(e.to_string().contains("auth.jwtSecretBase64"), "{e}");
        // Not base64; both forms at once.
        for (cfg, key) in [
            (
                json!({"enabled": true, "mode": "jwt", "jwtSecretBase64": "not base64!"}),
                "auth.jwtSecretBase64",
            ),
            (
                json!({"enabled": true, "mode": "jwt", "jwtSecretBase64": b64,
                    "jwtSecret": "y".repeat(40)}),
                "auth.jwtSecretBase64",
            ),
            (
                json!({"enabled": true, "mode": "jwt", "jwt": {"issuers": [
                {"issuer": "https://i", "secretBase64": "%%%"}]}}),
                "auth.jwt.issuers[0].secretBase64",
            ),
            (
                json!({"enabled": true, "mode": "jwt", "jwt": {"issuers": [
                {"issuer": "https://i", "secretBase64": b64, "secret": "y".repeat(40)}]}}),
                "auth.jwt.issuers[0].secretBase64",
            ),
        ] {
            let c: AuthConfig = serde_json::from_value(cfg).unwrap();
            let e = c.build().unwrap_err();
            assert!(e.to_string().contains(key), "{key}: {e}");
            assert!(!e.to_string().contains(&b64), "{e}");
        }
    }

    #[test]
    fn seed_config_builds_and_hides_secrets() {
        let cfg: AuthConfig = serde_json::from_value(serde_json::json!({
            "enabled": true,
            "mode": "apikey",
            "apiKey": KEY,
            "bearerToken": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.c2lnbmF0dXJlLWJ5dGVz",
            "username": "admin",
            "password": "secret-password",
            "jwtSecret": "your-jwt-secret-key-that-is-32-bytes!",
            "jwtAlgorithm": "HS256"
        }))
        .unwrap();
        let layer = cfg.build().unwrap();
        let dbg = format!("{cfg:?} {layer:?}");
        for s in [KEY, "secret-password", "your-jwt-secret", "c2lnbmF0dXJl"] {
            assert!(!dbg.contains(s), "{s} leaked");
        }
    }

    #[test]
    fn credential_headers_are_one_validated_list() {
        let with = |v: serde_json::Value| -> AuthConfig { serde_json::from_value(v).unwrap() };
        let cfg = with(serde_json::json!({
            "enabled": true, "mode": ["apikey", "bearer"], "apiKey": KEY,
            "bearerToken": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.c2lnbmF0dXJlLWJ5dGVz",
            "apiKeyHeader": "X-MCP-Key", "credentialHeaders": ["X-Upstream-Token"]
        }));
        let layer = cfg.build().unwrap();
        let names: Vec<&str> = layer
            .credential_headers()
            .iter()
            .map(|h| h.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "authorization",
                "proxy-authorization",
                "cookie",
                "x-api-key",
                "x-auth-token",
                "x-mcp-key",
                "x-upstream-token"
            ]
        );
        assert_eq!(
            cfg.credential_header_names().unwrap(),
            layer.credential_headers()
        );
        // Off: the same list from the configuration.
        let off = with(serde_json::json!({"apiKeyHeader": "X-MCP-Key"}));
        assert!(
            off.credential_header_names()
                .unwrap()
                .iter()
                .any(|h| h == "x-mcp-key")
        );
        for bad in [
            " X-MCP-Key ",
            "X-MCP-Key ",
            "\tX-MCP-Key",
            "",
            "X MCP",
            "X-MCP-Key:",
        ] {
            let e = with(serde_json::json!({"enabled": true, "mode": "apikey", "apiKey": KEY, "apiKeyHeader": bad}))
                .build()
                .unwrap_err();
            assert_eq!(e.key(), "auth.apiKeyHeader", "{bad:?}");
            let e = with(serde_json::json!({"enabled": true, "mode": "apikey", "apiKey": KEY, "credentialHeaders": [bad]}))
                .build()
                .unwrap_err();
            assert_eq!(e.key(), "auth.credentialHeaders", "{bad:?}");
        }
    }

    #[test]
    fn basic_settings_apply() {
        let with = |basic: serde_json::Value| -> AuthConfig {
            serde_json::from_value(serde_json::json!({
                "enabled": true, "mode": "basic", "username": "admin",
                "passwordHash": crate::basic::hash_password(
                    "pw",
                    Some(argon2::Params::new(256, 1, 1, None).unwrap())
                ).unwrap(),
                "basic": basic
            }))
            .unwrap()
        };
        let b = with(serde_json::json!({"cacheCapacity": 64, "cacheMaxTtlSeconds": 60}))
            .basic_authenticator()
            .unwrap();
        assert!(format!("{b:?}").contains("cache: Some(64)"), "{b:?}");
        let defaults = with(serde_json::json!({})).basic_authenticator().unwrap();
        assert!(format!("{defaults:?}").contains("cache: Some(1024)"));
        for off in [
            serde_json::json!({"cacheCapacity": 0}),
            serde_json::json!({"cacheMaxTtlSeconds": 0}),
        ] {
            let b = with(off).basic_authenticator().unwrap();
            assert!(format!("{b:?}").contains("cache: None"));
        }
        let e = with(serde_json::json!({"maxConcurrent": 0}))
            .build()
            .unwrap_err();
        assert_eq!(e.key(), "auth.basic.maxConcurrent");
        assert!(
            serde_json::from_value::<AuthConfig>(serde_json::json!({"basic": {"cache": 1}}))
                .is_err()
        );
    }

    #[test]
    fn modes_parse() {
        let m: Modes = serde_json::from_str(r#""apikey, jwt""#).unwrap();
        assert_eq!(m.0, vec![Mode::ApiKey, Mode::Jwt]);
        let m: Modes = serde_json::from_str(r#"["mtls","bearer"]"#).unwrap();
        assert_eq!(m.0, vec![Mode::Mtls, Mode::Bearer]);
        assert!(serde_json::from_str::<Modes>(r#""ldap""#).is_err());
    }

    #[test]
    fn errors_name_keys() {
        let weak: AuthConfig = serde_json::from_value(serde_json::json!({
            "enabled": true, "mode": "apikey", "apiKey": "abcdefgh12345678"
        }))
        .unwrap();
        let e = weak.build().unwrap_err();
        assert_eq!(e.key(), "auth.apiKey");
        assert!(!e.to_string().contains("abcdefgh12345678"));
        let nomode: AuthConfig =
            serde_json::from_value(serde_json::json!({"enabled": true})).unwrap();
        assert_eq!(nomode.build().unwrap_err().key(), "auth.mode");
        let bearer: AuthConfig =
            serde_json::from_value(serde_json::json!({"enabled": true, "mode": "bearer"})).unwrap();
        assert_eq!(bearer.build().unwrap_err().key(), "auth.bearerToken");
        let badalg: AuthConfig = serde_json::from_value(serde_json::json!({
            "enabled": true, "mode": "jwt", "jwtSecret": "x".repeat(40), "jwtAlgorithm": "none"
        }))
        .unwrap();
        assert_eq!(badalg.build().unwrap_err().key(), "auth.jwtAlgorithm");
        let disabled = AuthConfig::default().build().unwrap();
        assert!(format!("{disabled:?}").contains("anonymous: true"));
        let dated: AuthConfig = serde_json::from_value(serde_json::json!({
            "enabled": true, "mode": "apikey",
            "apiKeys": [{"id": "a", "key": KEY, "expiresAt": "2030-01-01T00:00:00Z", "scopes": ["x"]}]
        }))
        .unwrap();
        assert!(dated.api_keys[0].expires_at.is_some());
        dated.build().unwrap();
    }

    #[test]
    fn jwt_errors_name_the_key_written_in_the_file() {
        let build = |v: serde_json::Value| {
            let c: AuthConfig = serde_json::from_value(v).unwrap();
            c.build().unwrap_err()
        };
        // The seed's own example secret (19 bytes) is too short for HS256.
        let e = build(serde_json::json!({
            "enabled": true, "mode": "jwt", "jwtSecret": "your-jwt-secret-key"
        }));
        assert_eq!(e.key(), "auth.jwtSecret", "{e}");
        assert!(e.to_string().contains("32 bytes"), "{e}");
        assert!(!e.to_string().contains("your-jwt-secret-key"), "{e}");
        // A shared secret with a public-key algorithm.
        let e = build(serde_json::json!({
            "enabled": true, "mode": "jwt", "jwtSecret": "x".repeat(40), "jwtAlgorithm": "RS256"
        }));
        assert_eq!(e.key(), "auth.jwtAlgorithm", "{e}");
        assert!(e.to_string().contains("public key"), "{e}");
        // With jwtSecret in front, the file's first issuer is still issuers[0].
        let e = build(serde_json::json!({
            "enabled": true, "mode": "jwt", "jwtSecret": "x".repeat(40),
            "jwt": {"issuers": [{"issuer": "https://idp.example", "secret": "short"}]}
        }));
        assert_eq!(e.key(), "auth.jwt.issuers[0].keys[0]", "{e}");
        let e = build(serde_json::json!({
            "enabled": true, "mode": "jwt",
            "jwt": {"issuers": [
                {"issuer": "https://a.example", "secret": "y".repeat(40)},
                {"issuer": "https://b.example", "secret": "y".repeat(40), "secretAlgorithm": "HS999"}
            ]}
        }));
        assert_eq!(e.key(), "auth.jwt.issuers[1].secretAlgorithm", "{e}");
    }
}
