//! [`Principal`]: who the caller is and how that was proven, and its qualified id.
//!
//! # Qualified ids
//!
//! A bare id (`ops`) says nothing of how it was proven: the API key `ops`, the Basic user
//! `ops`, a certificate `CN=ops` and the JWT `sub` `ops` of any issuer would all be `ops`.
//! Every principal therefore also carries a **qualified id**, computed once when it is
//! built, which policy rules, rate-limit keys and audit records use:
//!
//! | method | qualified id |
//! |---|---|
//! | API key | `apikey:<id>` |
//! | static bearer token | `bearer:<id>` |
//! | JWT | `jwt:<issuer>#<sub>` (`<issuer>` with `%` and `#` percent-encoded; empty for an issuer configured without a fixed `iss`) |
//! | HTTP Basic | `basic:<user>` |
//! | client certificate | `mtls:<identity>` (the SPIFFE ID, common name, ... the configuration chose) |
//! | none (authentication off) | `anonymous` |
//!
//! The mapping is injective: two principals with different (method, issuer, id) never
//! share a qualified id, whatever characters the id or the issuer hold (the method
//! prefixes are prefix-free, and the issuer cannot contain the `#` that ends it).
//!
//! [`PrincipalSources`] resolves the principal entries an operator writes in
//! configuration: a qualified entry matches that method only, `*:<id>` matches the bare id
//! from any method (on purpose), and a bare entry is accepted only when exactly one
//! configured method can produce it.

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

/// The method prefixes of qualified ids, in [`AuthMethod`] order (`anonymous` has no colon).
const PREFIXES: &[(AuthMethod, &str)] = &[
    (AuthMethod::ApiKey, "apikey:"),
    (AuthMethod::BearerToken, "bearer:"),
    (AuthMethod::Jwt, "jwt:"),
    (AuthMethod::Basic, "basic:"),
    (AuthMethod::ClientCertificate, "mtls:"),
];

/// The qualified id of a principal (see the [module documentation](self)):
/// `apikey:<id>`, `bearer:<id>`, `jwt:<issuer>#<sub>`, `basic:<user>`, `mtls:<identity>`,
/// `anonymous`. `issuer` is read for [`AuthMethod::Jwt`] only (`None` is the empty issuer).
///
/// ```
/// use mcp_core::{AuthMethod, principal::qualified_id};
/// assert_eq!(qualified_id(AuthMethod::ApiKey, None, "ops"), "apikey:ops");
/// assert_eq!(qualified_id(AuthMethod::Jwt, Some("https://idp/#x"), "a#b"), "jwt:https://idp/%23x#a#b");
/// ```
pub fn qualified_id(method: AuthMethod, issuer: Option<&str>, id: &str) -> String {
    let mut out = String::with_capacity(id.len() + 12 + issuer.map_or(0, str::len));
    match method {
        AuthMethod::Anonymous => {
            out.push_str("anonymous");
            if id != "anonymous" {
                out.push(':');
                out.push_str(id);
            }
            return out;
        }
        AuthMethod::Jwt => {
            out.push_str("jwt:");
            for c in issuer.unwrap_or_default().chars() {
                match c {
                    '%' => out.push_str("%25"),
                    '#' => out.push_str("%23"),
                    c => out.push(c),
                }
            }
            out.push('#');
        }
        m => {
            let prefix = PREFIXES
                .iter()
                .find(|(pm, _)| *pm == m)
                .map_or("unknown:", |(_, p)| p);
            out.push_str(prefix);
        }
    }
    out.push_str(id);
    out
}

/// The method a qualified id (or a pattern written like one) names, and the rest after
/// its prefix (`"apikey:ops"` gives `(ApiKey, "ops")`; `"anonymous"` gives
/// `(Anonymous, "")`). `None` for a bare id.
pub fn split_qualified(s: &str) -> Option<(AuthMethod, &str)> {
    if s == "anonymous" {
        return Some((AuthMethod::Anonymous, ""));
    }
    if let Some(rest) = s.strip_prefix("anonymous:") {
        return Some((AuthMethod::Anonymous, rest));
    }
    PREFIXES
        .iter()
        .find_map(|(m, p)| s.strip_prefix(p).map(|rest| (*m, rest)))
}

#[derive(Serialize)]
struct Inner {
    id: String,
    method: AuthMethod,
    #[serde(skip_serializing_if = "Option::is_none")]
    issuer: Option<String>,
    qualified_id: String,
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
            .field("qualified_id", &self.0.qualified_id)
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
            && self.0.issuer == other.0.issuer
            && self.0.credential_id == other.0.credential_id
            && self.0.scopes == other.0.scopes
            && self.0.claims == other.0.claims
    }
}

impl Principal {
    /// A principal with an id and the way it was authenticated, no scopes, no claims.
    pub fn new(id: impl Into<String>, method: AuthMethod) -> Self {
        let id = id.into();
        Self(Arc::new(Inner {
            qualified_id: qualified_id(method, None, &id),
            id,
            method,
            issuer: None,
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
                issuer: i.issuer.clone(),
                qualified_id: i.qualified_id.clone(),
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

    /// Sets the issuer that vouched for a JWT principal (the configured issuer, whose
    /// `iss` the token carried), which becomes part of its [qualified id](Self::qualified_id):
    /// `jwt:<issuer>#<sub>`. Ignored in the qualified id of other methods.
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        let inner = self.inner_mut();
        inner.issuer = Some(issuer.into());
        inner.qualified_id = qualified_id(inner.method, inner.issuer.as_deref(), &inner.id);
        self
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

    /// The id qualified by how it was proven: `apikey:<id>`, `bearer:<id>`,
    /// `jwt:<issuer>#<sub>`, `basic:<user>`, `mtls:<identity>` or `anonymous` (see the
    /// [module documentation](self)). Computed once when the principal is built. Policy
    /// rules, rate-limit keys, audit records and anything else that tells principals apart
    /// should use it rather than [`id`](Self::id).
    ///
    /// ```
    /// use mcp_core::{AuthMethod, Principal};
    /// let key = Principal::new("ops", AuthMethod::ApiKey);
    /// let cert = Principal::new("ops", AuthMethod::ClientCertificate);
    /// assert_eq!(key.qualified_id(), "apikey:ops");
    /// assert_ne!(key.qualified_id(), cert.qualified_id());
    /// let jwt = Principal::new("alice", AuthMethod::Jwt).with_issuer("https://idp.example");
    /// assert_eq!(jwt.qualified_id(), "jwt:https://idp.example#alice");
    /// ```
    pub fn qualified_id(&self) -> &str {
        &self.0.qualified_id
    }

    /// The issuer of a JWT principal, when the authenticator set one.
    pub fn issuer(&self) -> Option<&str> {
        self.0.issuer.as_deref()
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

/// Matches `text` against `pattern`, where `*` matches any run of characters (the
/// pattern syntax of principal entries and policy rules).
///
/// ```
/// use mcp_core::principal::glob_match;
/// assert!(glob_match("apikey:ci-*", "apikey:ci-7"));
/// assert!(!glob_match("apikey:ci-*", "basic:ci-7"));
/// ```
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

/// One configured way principals are proven (see [`PrincipalSources`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    method: AuthMethod,
    issuer: Option<String>,
    /// The ids it can produce; `None`: any id (a JWT `sub`, a certificate identity, keys
    /// added at run time).
    ids: Option<BTreeSet<String>>,
}

/// A principal entry of configuration (a policy rule's `principals`, a per-principal rate
/// limit), resolved by [`PrincipalSources::resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalEntry {
    /// A pattern over [qualified ids](Principal::qualified_id) (`apikey:ops`,
    /// `jwt:https://idp#*`, `*`).
    Qualified(String),
    /// `*:<pattern>`: a pattern over bare ids, whatever method proved them. Written on
    /// purpose by the operator; callers log a warning.
    AnySource(String),
}

impl PrincipalEntry {
    /// Whether `p` matches, `*` matching any run of characters.
    pub fn matches(&self, p: &Principal) -> bool {
        match self {
            Self::Qualified(q) => glob_match(q, p.qualified_id()),
            Self::AnySource(b) => glob_match(b, p.id()),
        }
    }

    /// The entry as written back in configuration (`apikey:ops`, `*:ops`).
    pub fn as_written(&self) -> String {
        match self {
            Self::Qualified(q) => q.clone(),
            Self::AnySource(b) => format!("*:{b}"),
        }
    }
}

/// What the configured authentication can produce, to resolve the principal entries an
/// operator writes:
///
/// - a qualified entry (`apikey:ops`, `jwt:<issuer>#<sub>`, `mtls:spiffe://td/x`,
///   `anonymous`) matches that method only; it is refused when no configured method
///   produces principals of that kind;
/// - `*:<id>` matches the bare id from any method, on purpose;
/// - `*` matches every principal;
/// - a bare entry (`ops`) is accepted only when exactly one configured method can produce
///   it (an API key or Basic user of that id, or the only method whose ids are open, such
///   as the only JWT issuer or client certificates), and becomes that method's qualified
///   entry; otherwise it is refused with the forms to write instead.
///
/// ```
/// use mcp_core::{AuthMethod, PrincipalEntry, PrincipalSources};
/// let s = PrincipalSources::new()
///     .with_ids(AuthMethod::ApiKey, ["ops", "ci"])
///     .with_ids(AuthMethod::Basic, ["ops", "carol"]);
/// assert_eq!(s.resolve("ci").unwrap(), PrincipalEntry::Qualified("apikey:ci".into()));
/// assert_eq!(s.resolve("carol").unwrap(), PrincipalEntry::Qualified("basic:carol".into()));
/// assert!(s.resolve("ops").is_err());
/// assert_eq!(s.resolve("*:ops").unwrap(), PrincipalEntry::AnySource("ops".into()));
/// let open = s.clone().with_any_id(AuthMethod::ClientCertificate);
/// assert!(open.resolve("ci").is_err(), "a certificate could be called ci too");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrincipalSources {
    sources: Vec<Source>,
}

fn method_name(m: AuthMethod) -> &'static str {
    match m {
        AuthMethod::ApiKey => "API key",
        AuthMethod::BearerToken => "bearer token",
        AuthMethod::Jwt => "JWT",
        AuthMethod::Basic => "Basic user",
        AuthMethod::ClientCertificate => "client certificate",
        AuthMethod::Anonymous => "anonymous",
    }
}

impl PrincipalSources {
    /// No source yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Authentication switched off: every request is [`Principal::anonymous`].
    pub fn anonymous() -> Self {
        Self::new().with_ids(AuthMethod::Anonymous, ["anonymous"])
    }

    /// A method that produces only these ids (configured API keys, Basic users).
    pub fn with_ids<I, T>(mut self, method: AuthMethod, ids: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let ids: BTreeSet<String> = ids.into_iter().map(Into::into).collect();
        match self
            .sources
            .iter_mut()
            .find(|s| s.method == method && s.issuer.is_none())
        {
            Some(Source {
                ids: Some(known), ..
            }) => known.extend(ids),
            Some(_) => {}
            None => self.sources.push(Source {
                method,
                issuer: None,
                ids: Some(ids),
            }),
        }
        self
    }

    /// A method that can produce any id (client certificates, API keys from a store).
    pub fn with_any_id(mut self, method: AuthMethod) -> Self {
        match self
            .sources
            .iter_mut()
            .find(|s| s.method == method && s.issuer.is_none())
        {
            Some(s) => s.ids = None,
            None => self.sources.push(Source {
                method,
                issuer: None,
                ids: None,
            }),
        }
        self
    }

    /// A JWT issuer (`None`: one configured without a fixed `iss`); its `sub` can be any id.
    pub fn with_jwt_issuer(mut self, issuer: Option<String>) -> Self {
        let s = Source {
            method: AuthMethod::Jwt,
            issuer: Some(issuer.unwrap_or_default()),
            ids: None,
        };
        if !self.sources.contains(&s) {
            self.sources.push(s);
        }
        self
    }

    /// Whether some configured method produces principals of `method`.
    pub fn has(&self, method: AuthMethod) -> bool {
        self.sources.iter().any(|s| s.method == method)
    }

    /// Resolves one configured entry (see the [type documentation](Self)). The error is
    /// the rule broken, for the caller to name its key with.
    pub fn resolve(&self, entry: &str) -> Result<PrincipalEntry, String> {
        if entry.is_empty() {
            return Err("empty principal".into());
        }
        if entry == "*" {
            return Ok(PrincipalEntry::Qualified(entry.to_owned()));
        }
        if let Some(rest) = entry.strip_prefix("*:") {
            if rest.is_empty() {
                return Err("`*:` needs an id after it".into());
            }
            return Ok(PrincipalEntry::AnySource(rest.to_owned()));
        }
        if let Some((method, _)) = split_qualified(entry) {
            if !self.has(method) {
                return Err(format!(
                    "{entry:?} names {} principals, which no configured authentication \
                     method produces",
                    method_name(method)
                ));
            }
            return Ok(PrincipalEntry::Qualified(entry.to_owned()));
        }
        let producers: Vec<&Source> = self
            .sources
            .iter()
            .filter(|s| match &s.ids {
                None => true,
                Some(ids) => ids.iter().any(|id| glob_match(entry, id)),
            })
            .collect();
        let write = |s: &Source| qualified_id(s.method, s.issuer.as_deref(), entry);
        match producers.as_slice() {
            [one] => Ok(PrincipalEntry::Qualified(write(one))),
            [] => Err(format!(
                "no configured authentication method produces the principal {entry:?}; \
                 write it qualified ({}) if it is meant",
                self.sources
                    .iter()
                    .map(write)
                    .chain(std::iter::once(format!("*:{entry}")))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            several => Err(format!(
                "the principal {entry:?} could come from several authentication methods \
                 ({}); write which one it is ({}), or `*:{entry}` for any of them",
                several
                    .iter()
                    .map(|s| method_name(s.method))
                    .collect::<Vec<_>>()
                    .join(", "),
                several
                    .iter()
                    .map(|s| write(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
    fn qualified_ids() {
        let q = |m, id: &str| Principal::new(id, m).qualified_id().to_owned();
        assert_eq!(q(AuthMethod::ApiKey, "ops"), "apikey:ops");
        assert_eq!(q(AuthMethod::BearerToken, "ops"), "bearer:ops");
        assert_eq!(q(AuthMethod::Basic, "x#y"), "basic:x#y");
        assert_eq!(
            q(AuthMethod::ClientCertificate, "spiffe://td/a"),
            "mtls:spiffe://td/a"
        );
        assert_eq!(q(AuthMethod::Jwt, "alice"), "jwt:#alice");
        assert_eq!(Principal::anonymous().qualified_id(), "anonymous");
        let j = Principal::new("b#c", AuthMethod::Jwt)
            .with_scopes(["s"])
            .with_issuer("a%#");
        assert_eq!(j.qualified_id(), "jwt:a%25%23#b#c");
        assert_eq!(j.issuer(), Some("a%#"));
        assert_eq!(
            split_qualified(j.qualified_id()),
            Some((AuthMethod::Jwt, "a%25%23#b#c"))
        );
        assert_eq!(split_qualified("ops"), None);
        assert_eq!(
            split_qualified("anonymous"),
            Some((AuthMethod::Anonymous, ""))
        );
        // The qualified id survives the copy a builder makes of a shared principal.
        let shared = j.clone().with_scopes(["t"]);
        assert_eq!(shared.qualified_id(), j.qualified_id());
    }

    #[test]
    fn sources_resolve_entries() {
        let s = PrincipalSources::new()
            .with_ids(AuthMethod::ApiKey, ["ops", "ci-1", "ci-2"])
            .with_ids(AuthMethod::Basic, ["ops"]);
        let q = |e: &str| s.resolve(e);
        assert_eq!(
            q("ci-*"),
            Ok(PrincipalEntry::Qualified("apikey:ci-*".into()))
        );
        let e = q("ops").unwrap_err();
        assert!(
            e.contains("apikey:ops") && e.contains("basic:ops") && e.contains("*:ops"),
            "{e}"
        );
        assert!(q("nobody").unwrap_err().contains("no configured"));
        assert!(q("mtls:ops").unwrap_err().contains("client certificate"));
        assert_eq!(
            q("basic:ops"),
            Ok(PrincipalEntry::Qualified("basic:ops".into()))
        );
        assert_eq!(q("*"), Ok(PrincipalEntry::Qualified("*".into())));
        assert!(q("*:").is_err() && q("").is_err());
        // Two JWT issuers: a bare sub is ambiguous; one issuer: it is that issuer's.
        let one = PrincipalSources::new().with_jwt_issuer(Some("https://a#x".into()));
        assert_eq!(
            one.resolve("alice"),
            Ok(PrincipalEntry::Qualified("jwt:https://a%23x#alice".into()))
        );
        let two = one.clone().with_jwt_issuer(None);
        assert!(two.resolve("alice").is_err());
        assert_eq!(
            PrincipalSources::anonymous().resolve("anonymous"),
            Ok(PrincipalEntry::Qualified("anonymous".into()))
        );
        // Matching.
        let key = Principal::new("ops", AuthMethod::ApiKey);
        let cert = Principal::new("ops", AuthMethod::ClientCertificate);
        let e = PrincipalEntry::Qualified("apikey:ops".into());
        assert!(e.matches(&key) && !e.matches(&cert));
        let any = PrincipalEntry::AnySource("ops".into());
        assert!(any.matches(&key) && any.matches(&cert));
        assert_eq!(any.as_written(), "*:ops");
    }

    fn method() -> impl Strategy<Value = AuthMethod> {
        prop_oneof![
            Just(AuthMethod::ApiKey),
            Just(AuthMethod::BearerToken),
            Just(AuthMethod::Jwt),
            Just(AuthMethod::Basic),
            Just(AuthMethod::ClientCertificate),
            Just(AuthMethod::Anonymous),
        ]
    }

    proptest! {
        // Injective: different (method, issuer, id) never give one qualified id, whatever
        // separators (`:`, `#`, `%`) and prefixes the issuer and the id hold. For methods
        // other than JWT the issuer is not part of the identity.
        #[test]
        fn qualified_id_is_injective(
            m1 in method(), i1 in "[a#%:jwtbs]{0,6}", id1 in "[a#%:jwtbsanoymu]{0,9}",
            m2 in method(), i2 in "[a#%:jwtbs]{0,6}", id2 in "[a#%:jwtbsanoymu]{0,9}",
        ) {
            let key = |m: AuthMethod, i: &str, id: &str| {
                (m, if m == AuthMethod::Jwt { i.to_owned() } else { String::new() }, id.to_owned())
            };
            if key(m1, &i1, &id1) != key(m2, &i2, &id2) {
                prop_assert_ne!(
                    qualified_id(m1, Some(&i1), &id1),
                    qualified_id(m2, Some(&i2), &id2)
                );
            }
        }

        #[test]
        fn split_finds_the_method(m in method(), i in "[a#%:]{0,6}", id in "[a#%:]{0,9}") {
            let q = qualified_id(m, Some(&i), &id);
            prop_assert_eq!(split_qualified(&q).map(|(m, _)| m), Some(m));
        }
    }

    #[test]
    fn builder_on_shared_principal_does_not_affect_clone() {
        let p = Principal::new("x", AuthMethod::Basic);
        let q = p.clone().with_scopes(["s"]);
        assert!(!p.has_scope("s"));
        assert!(q.has_scope("s"));
    }
}
