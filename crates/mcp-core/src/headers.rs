//! Headers that a reverse proxy must not pass on: from the client to the upstream, and
//! from the upstream back to the client ([`UpstreamResponseHeaders`]).
//!
//! Two classes, kept apart because they are handled differently:
//!
//! - **Credentials** ([`DEFAULT_CREDENTIAL_HEADERS`]): headers that carry a secret. The
//!   authentication layer owns the full list (these defaults plus every header it is
//!   configured to read, `mcp_auth::AuthLayer::credential_headers`); that one list drives
//!   authentication, upstream stripping, audit masking and tracing redaction.
//! - **Untrusted headers** ([`UntrustedHeaders`]): identity, client-certificate,
//!   client-address, routing and method-override headers (`X-Forwarded-User`,
//!   `X-Remote-User`, `X-Auth-Request-*`, `X-Forwarded-Client-Cert`, `X-SSL-Client-*`,
//!   `True-Client-IP`, `X-Original-URL`, `Via`, `X-HTTP-Method-Override`, ...). They are
//!   not secret, but an upstream that trusts one (an Envoy-style XFCC, an
//!   oauth2-proxy-style `X-Auth-Request-User`) can be handed any identity, address or
//!   route by whoever writes it. A proxy removes every one a client sent before
//!   forwarding, and sets the ones it vouches for itself.
//!
//! Header names are compared with `_` and `-` as the same character
//! ([`same_header_name`]): CGI, WSGI, PHP and nginx with `underscores_in_headers` read
//! `X_Forwarded_User` as `X-Forwarded-User`. [`UntrustedHeaders::default`] also removes
//! every client header whose name contains `_` (nginx's default), so no spelling of a
//! listed or future name gets through that way.
//!
//! ```
//! use http::{HeaderMap, HeaderName};
//! use mcp_core::headers::UntrustedHeaders;
//!
//! let untrusted = UntrustedHeaders::default()
//!     .strip("X-Tenant").unwrap()          // one more name
//!     .strip("X-Internal-*").unwrap()      // a prefix
//!     .allow("Via").unwrap();              // forwarded after all
//! let mut h = HeaderMap::new();
//! for name in ["x-remote-user", "X-Auth-Request-Email", "x-tenant", "x-internal-role", "via", "accept"] {
//!     h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), "v".parse().unwrap());
//! }
//! untrusted.remove_from(&mut h);
//! let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
//! left.sort();
//! assert_eq!(left, ["accept", "via"]);
//! ```

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue};

/// Whether two header names are the same for a reader that treats `_` as `-` (CGI,
/// WSGI, PHP, nginx with `underscores_in_headers`): ASCII case-insensitive, `_` == `-`.
///
/// ```
/// use mcp_core::headers::same_header_name;
/// assert!(same_header_name("X_API_Key", "x-api-key"));
/// assert!(!same_header_name("x-api-keys", "x-api-key"));
/// ```
pub fn same_header_name(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| canon_byte(x) == canon_byte(y))
}

fn canon_byte(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

/// `name` lower case with every `_` read as `-` (the form [`same_header_name`]
/// compares).
pub fn canonical_header_name(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b == b'_' || b.is_ascii_uppercase()) {
        Cow::Owned(name.bytes().map(|b| canon_byte(b) as char).collect())
    } else {
        Cow::Borrowed(name)
    }
}

/// Whether `name` is in `list`, compared as [`same_header_name`] does.
pub fn header_name_in(name: &str, list: &[HeaderName]) -> bool {
    list.iter().any(|n| same_header_name(n.as_str(), name))
}

/// `name` as a canonical [`HeaderName`] (`_` read as `-`).
fn canonical(name: HeaderName) -> HeaderName {
    match canonical_header_name(name.as_str()) {
        Cow::Borrowed(_) => name,
        Cow::Owned(c) => HeaderName::from_bytes(c.as_bytes()).unwrap_or(name),
    }
}

/// Headers that carry a credential whatever the configuration: `Authorization`,
/// `Proxy-Authorization`, `Cookie`, `X-API-Key` and `X-Auth-Token` (lower case).
pub const DEFAULT_CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "x-auth-token",
];

/// [`DEFAULT_CREDENTIAL_HEADERS`] as header names.
pub fn default_credential_headers() -> Vec<HeaderName> {
    DEFAULT_CREDENTIAL_HEADERS
        .iter()
        .map(|h| HeaderName::from_static(h))
        .collect()
}

/// The exact names [`UntrustedHeaders::default`] removes (lower case): identity set by
/// authenticating proxies, client certificates, client addresses, routing and method
/// overrides.
pub const DEFAULT_UNTRUSTED_HEADERS: &[&str] = &[
    // identity asserted by an authenticating proxy
    "remote-user",
    "x-remote-user",
    "x-remote-group",
    "x-user",
    "x-user-id",
    "x-user-email",
    "x-username",
    "x-email",
    "x-authenticated-user",
    "x-authenticated-userid",
    "x-authenticated-groups",
    "x-principal",
    "x-mcp-principal",
    "x-webauth-user",
    "x-proxy-user",
    "x-consumer-id",
    "x-consumer-username",
    "x-consumer-custom-id",
    "x-consumer-groups",
    "x-credential-identifier",
    "x-anonymous-consumer",
    "x-jwt-assertion",
    "x-jwt-payload",
    "x-userinfo",
    "x-id-token",
    "x-access-token",
    "x-goog-iap-jwt-assertion",
    "remote-groups",
    "remote-email",
    "remote-name",
    "x-auth-user",
    "x-auth-groups",
    "x-roles",
    "x-groups",
    // client certificates
    "x-client-cert",
    "x-client-certificate",
    "x-client-verify",
    "x-client-dn",
    "x-arr-clientcert",
    "x-tls-client-cert",
    // client addresses
    "forwarded",
    "x-real-ip",
    "true-client-ip",
    "client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "cf-connecting-ipv6",
    "fastly-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-host",
    // routing
    "via",
    "x-original-url",
    "x-override-url",
    "x-original-uri",
    "x-original-host",
    "x-original-method",
    "x-original-forwarded-for",
    "x-rewrite-url",
    "x-http-host-override",
    "x-url-scheme",
    "front-end-https",
    // method overrides
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "_method",
];

/// The prefixes [`UntrustedHeaders::default`] removes (lower case): every `X-Forwarded-*`
/// (`-For`, `-Host`, `-Proto`, `-Port`, `-Prefix`, `-User`, `-Email`, `-Client-Cert`,
/// ...), oauth2-proxy's `X-Auth-Request-*`, `X-SSL-*` and `X-Remote-Extra-*`, Envoy's
/// `X-Envoy-*`, and the identity headers of cloud front ends (`X-Goog-Authenticated-*`,
/// `X-MS-Client-Principal*`, `X-MS-Token-AAD-*`, `X-Amzn-Oidc-*`), authentik's
/// `X-authentik-*`, Cloudflare Access's `Cf-Access-*`, Pomerium's `X-Pomerium-*`,
/// Kubernetes' `Impersonate-*`, and client-certificate headers (`SSL-Client-*`,
/// `X-Client-Cert-*`, `X-Client-Certificate-*`).
pub const DEFAULT_UNTRUSTED_PREFIXES: &[&str] = &[
    "x-forwarded-",
    "x-auth-request-",
    "x-ssl-",
    "x-remote-extra-",
    "x-envoy-",
    "x-goog-authenticated-",
    "x-ms-client-principal",
    "x-ms-token-aad-",
    "x-amzn-oidc-",
    "x-authentik-",
    "cf-access-",
    "x-pomerium-",
    "impersonate-",
    "ssl-client-",
    "x-client-cert-",
    "x-client-certificate-",
];

/// A header name or prefix that is not valid in a strip or allow list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a header name (an RFC 9110 token, written as is), nor a prefix ending in `*`"
)]
pub struct InvalidHeaderPattern(pub String);

/// Which client request headers a proxy removes before forwarding: exact names and
/// prefixes (see the [module documentation](self)), compared with `_` read as `-`.
/// [`Default`] is the documented list and removes every name containing `_`;
/// [`UntrustedHeaders::none`] an empty one that keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UntrustedHeaders {
    patterns: NamePatterns,
    underscored: bool,
}

impl Default for UntrustedHeaders {
    fn default() -> Self {
        Self {
            patterns: NamePatterns::new(
                DEFAULT_UNTRUSTED_HEADERS
                    .iter()
                    .map(|h| canonical(HeaderName::from_static(h))),
                DEFAULT_UNTRUSTED_PREFIXES,
            ),
            underscored: true,
        }
    }
}

/// Names and prefixes (lower case, `_` read as `-`) and the names allowed back despite a
/// prefix: the list both [`UntrustedHeaders`] and [`UpstreamResponseHeaders`] keep.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct NamePatterns {
    names: Vec<HeaderName>,
    prefixes: Vec<String>,
    allowed: Vec<HeaderName>,
}

impl NamePatterns {
    fn new(names: impl Iterator<Item = HeaderName>, prefixes: &[&str]) -> Self {
        Self {
            names: names.collect(),
            prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
            allowed: Vec::new(),
        }
    }

    /// Adds a name or a prefix (`pattern` ending in `*`).
    fn strip(&mut self, pattern: &str) -> Result<(), InvalidHeaderPattern> {
        let (name, prefix) = parse_pattern(pattern)?;
        if prefix {
            self.prefixes.push(name.as_str().to_owned());
        } else {
            self.allowed.retain(|a| a != name);
            self.names.push(name);
        }
        Ok(())
    }

    /// Allows `name` back (a prefix is refused).
    fn allow(&mut self, name: &str) -> Result<HeaderName, InvalidHeaderPattern> {
        if name.ends_with('*') {
            return Err(InvalidHeaderPattern(name.to_owned()));
        }
        Ok(parse_pattern(name)?.0)
    }

    fn push_allowed(&mut self, name: HeaderName) {
        self.names.retain(|n| *n != name);
        self.allowed.push(name);
    }

    /// Whether the canonical name `n` is covered.
    fn matches(&self, n: &str) -> bool {
        if self.names.iter().any(|x| x.as_str() == n) {
            return true;
        }
        self.prefixes.iter().any(|p| n.starts_with(p.as_str()))
            && !self.allowed.iter().any(|a| a.as_str() == n)
    }
}

/// `pattern` as a lower-case name or prefix (`Some(prefix)` when it ends in `*`).
fn parse_pattern(pattern: &str) -> Result<(HeaderName, bool), InvalidHeaderPattern> {
    let bad = || InvalidHeaderPattern(pattern.to_owned());
    let (name, prefix) = match pattern.strip_suffix('*') {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    // `HeaderName::from_bytes` lower-cases and refuses anything outside a token
    // (spaces, colons, an empty name); nothing is trimmed.
    HeaderName::from_bytes(name.as_bytes())
        .map(|n| (canonical(n), prefix))
        .map_err(|_| bad())
}

impl UntrustedHeaders {
    /// An empty list (nothing removed).
    pub fn none() -> Self {
        Self {
            patterns: NamePatterns::default(),
            underscored: false,
        }
    }

    /// Whether every header whose name contains `_` is removed (on in
    /// [`UntrustedHeaders::default`], as nginx does by default): a CGI-minded upstream
    /// reads `X_Anything` as `X-Anything`, so no such name can be vouched for.
    pub fn strip_underscored(mut self, on: bool) -> Self {
        self.underscored = on;
        self
    }

    /// Also removes `pattern`: a header name (any case, `_` read as `-`), or a prefix
    /// ending in `*` (`X-Internal-*`).
    pub fn strip(mut self, pattern: &str) -> Result<Self, InvalidHeaderPattern> {
        self.patterns.strip(pattern)?;
        Ok(self)
    }

    /// Forwards the header `name` after all, even when a default name or prefix covers
    /// it (this weakens the default: log it). Prefixes are not accepted here.
    pub fn allow(mut self, name: &str) -> Result<Self, InvalidHeaderPattern> {
        let name = self.patterns.allow(name)?;
        self.patterns.push_allowed(name);
        Ok(self)
    }

    /// Whether `name` is removed (compared with `_` read as `-`).
    pub fn matches(&self, name: &HeaderName) -> bool {
        let raw = name.as_str();
        if self.underscored && raw.contains('_') {
            return true;
        }
        self.patterns.matches(&canonical_header_name(raw))
    }

    /// Removes every matching header from `headers`.
    pub fn remove_from(&self, headers: &mut HeaderMap) {
        let gone: Vec<HeaderName> = headers
            .keys()
            .filter(|k| self.matches(k))
            .cloned()
            .collect();
        for name in gone {
            headers.remove(name);
        }
    }

    /// The exact names removed (lower case).
    pub fn names(&self) -> &[HeaderName] {
        &self.patterns.names
    }

    /// The prefixes removed (lower case).
    pub fn prefixes(&self) -> &[String] {
        &self.patterns.prefixes
    }
}

/// The value of a header that names a verified principal to an upstream: `id` with `%`,
/// space, `,`, `;`, `"` and every byte outside visible ASCII percent-encoded (`%XX`,
/// upper-case hex), nothing trimmed. The encoding is one-to-one (distinct ids give
/// distinct values: `"admin "` is `admin%20`) and the value is one visible-ASCII token
/// without `,` or `;`, so an upstream that splits a field into a list reads one item.
/// `None` for an empty id (authenticators never produce one).
///
/// ```
/// use mcp_core::headers::principal_value;
/// assert_eq!(principal_value("alice").unwrap(), "alice");
/// assert_eq!(principal_value("alice, admin").unwrap(), "alice%2C%20admin");
/// assert_eq!(principal_value("jösé 100%").unwrap(), "j%C3%B6s%C3%A9%20100%25");
/// assert!(principal_value("").is_none());
/// ```
pub fn principal_value(id: &str) -> Option<HeaderValue> {
    use std::fmt::Write as _;
    if id.is_empty() {
        return None;
    }
    let mut s = String::with_capacity(id.len());
    for b in id.bytes() {
        if (0x21..=0x7e).contains(&b) && !matches!(b, b'%' | b',' | b';' | b'"') {
            s.push(b as char);
        } else {
            let _ = write!(s, "%{b:02X}");
        }
    }
    HeaderValue::from_str(&s).ok()
}

/// An `X-Forwarded-Client-Cert` value (Envoy's format) for a client certificate the
/// proxy verified itself: `Hash=<SHA-256 hex>;Subject="<subject>";URI=<uri>;DNS=<name>`
/// (one `URI` / `DNS` element per SAN). Values holding `,`, `;`, `=`, `"` or a space are
/// quoted with `"` and `\` escapes; bytes outside visible ASCII are percent-encoded, so
/// the result is always a valid header value. Set it only after removing a client's copy
/// ([`UntrustedHeaders::default`] removes every `X-Forwarded-*`).
///
/// ```
/// use mcp_core::headers::xfcc_value;
/// use mcp_core::ClientCertIdentity;
/// let id = ClientCertIdentity {
///     common_name: Some("agent-1".into()),
///     subject: "CN=agent-1,O=Example".into(),
///     issuer: "CN=test CA".into(),
///     dns_names: vec![],
///     uris: vec!["spiffe://example.org/sa/agent-1".into()],
///     serial: "01".into(),
///     fingerprint_sha256: [0xab; 32],
///     der: Default::default(),
/// };
/// let v = xfcc_value(&id);
/// assert!(v.starts_with("Hash=abab"));
/// assert!(v.ends_with(r#";Subject="CN=agent-1,O=Example";URI=spiffe://example.org/sa/agent-1"#));
/// ```
pub fn xfcc_value(id: &crate::ClientCertIdentity) -> String {
    let mut out = format!("Hash={}", id.fingerprint_hex());
    let mut push = |key: &str, value: &str| {
        out.push(';');
        out.push_str(key);
        out.push('=');
        out.push_str(&xfcc_escape(value));
    };
    push("Subject", &id.subject);
    for u in &id.uris {
        push("URI", u);
    }
    for d in &id.dns_names {
        push("DNS", d);
    }
    out
}

fn xfcc_escape(value: &str) -> String {
    use std::fmt::Write as _;
    let quote = value
        .bytes()
        .any(|b| matches!(b, b',' | b';' | b'=' | b'"' | b' ' | b'\\'));
    let mut s = String::with_capacity(value.len() + 2);
    if quote {
        s.push('"');
    }
    for b in value.bytes() {
        match b {
            b'"' | b'\\' => {
                s.push('\\');
                s.push(b as char);
            }
            b'%' => s.push_str("%25"),
            0x20..=0x7e => s.push(b as char),
            _ => {
                let _ = write!(s, "%{b:02X}");
            }
        }
    }
    if quote {
        s.push('"');
    }
    s
}

/// Response headers a proxy never passes from an upstream to its clients, whatever the
/// configuration (lower case): hop-by-hop headers (RFC 9110 section 7.6.1) and cookies
/// (the proxy never forwards a client's `Cookie`, and a cookie set for the proxy's origin
/// is the proxy's word). Headers a response's `Connection` names are removed too.
pub const ALWAYS_REMOVED_RESPONSE_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "set-cookie",
    "set-cookie2",
];

/// The exact names [`UpstreamResponseHeaders::default`] removes besides
/// [`ALWAYS_REMOVED_RESPONSE_HEADERS`] (lower case): what an upstream says for its own
/// origin, which a client would take as the proxy's.
pub const DEFAULT_UPSTREAM_RESPONSE_HEADERS: &[&str] = &[
    // authentication challenges: the proxy authenticates its clients
    "www-authenticate",
    "proxy-authenticate",
    "authentication-info",
    "proxy-authentication-info",
    // navigation: the upstream's URL space is not the proxy's (a relayed redirect sends
    // the client, and the API key header it does not drop across origins, wherever the
    // upstream says)
    "location",
    "content-location",
    "refresh",
    "link",
    // state kept by the client for the proxy's origin
    "clear-site-data",
    // transport and protocol advertisements, pinning
    "alt-svc",
    "strict-transport-security",
    "expect-ct",
    "public-key-pins",
    "public-key-pins-report-only",
    // report endpoints the client would send to
    "nel",
    "report-to",
    "reporting-endpoints",
    // cross-origin grants and the origin's browser policies (the proxy's own security
    // headers speak for its origin)
    "timing-allow-origin",
    "service-worker-allowed",
    "cross-origin-opener-policy",
    "cross-origin-embedder-policy",
    "cross-origin-embedder-policy-report-only",
    "cross-origin-opener-policy-report-only",
    "origin-agent-cluster",
    "permissions-policy",
    "document-policy",
    "x-permitted-cross-domain-policies",
    // browser instructions for the proxy's origin: login state (FedCM), prefetching,
    // client hints, source maps fetched by developer tools
    "set-login",
    "speculation-rules",
    "accept-ch",
    "critical-ch",
    "sourcemap",
    "x-sourcemap",
    // instructions to a front proxy (nginx, Apache, lighttpd serving a file instead)
    "x-accel-redirect",
    "x-sendfile",
    "x-lighttpd-send-file",
];

/// The prefixes [`UpstreamResponseHeaders::default`] removes: every `Access-Control-*`
/// (CORS belongs to the proxy, which answers for its own origin).
pub const DEFAULT_UPSTREAM_RESPONSE_PREFIXES: &[&str] = &["access-control-"];

/// Which upstream response headers a proxy removes before passing a response on to its
/// client: [`ALWAYS_REMOVED_RESPONSE_HEADERS`], the headers the response's `Connection`
/// names, and a list of names and prefixes compared with `_` read as `-` and in any case.
/// [`Default`] is [`DEFAULT_UPSTREAM_RESPONSE_HEADERS`] and
/// [`DEFAULT_UPSTREAM_RESPONSE_PREFIXES`]; [`UpstreamResponseHeaders::none`] removes
/// only what is always removed.
///
/// Apply it to the upstream's response before any layer of the proxy's own adds its
/// headers (CORS, challenges, HSTS): those then survive.
///
/// ```
/// use http::{HeaderMap, HeaderName};
/// use mcp_core::headers::UpstreamResponseHeaders;
///
/// let filter = UpstreamResponseHeaders::default()
///     .strip("X-Debug-*").unwrap()
///     .allow("Link").unwrap();
/// let mut h = HeaderMap::new();
/// for name in ["access-control-allow-origin", "www-authenticate", "set-cookie",
///              "x-debug-trace", "link", "content-type"] {
///     h.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), "v".parse().unwrap());
/// }
/// filter.remove_from(&mut h);
/// let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
/// left.sort();
/// assert_eq!(left, ["content-type", "link"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamResponseHeaders {
    patterns: NamePatterns,
}

impl Default for UpstreamResponseHeaders {
    fn default() -> Self {
        Self {
            patterns: NamePatterns::new(
                DEFAULT_UPSTREAM_RESPONSE_HEADERS
                    .iter()
                    .map(|h| HeaderName::from_static(h)),
                DEFAULT_UPSTREAM_RESPONSE_PREFIXES,
            ),
        }
    }
}

impl UpstreamResponseHeaders {
    /// Removes only [`ALWAYS_REMOVED_RESPONSE_HEADERS`] and what `Connection` names.
    pub fn none() -> Self {
        Self {
            patterns: NamePatterns::default(),
        }
    }

    /// Also removes `pattern`: a header name (any case, `_` read as `-`), or a prefix
    /// ending in `*` (`X-Debug-*`).
    pub fn strip(mut self, pattern: &str) -> Result<Self, InvalidHeaderPattern> {
        self.patterns.strip(pattern)?;
        Ok(self)
    }

    /// Passes the header `name` on after all, even when a default name or prefix covers
    /// it (this weakens the default: log it). Prefixes are not accepted, nor a name of
    /// [`ALWAYS_REMOVED_RESPONSE_HEADERS`].
    pub fn allow(mut self, name: &str) -> Result<Self, InvalidHeaderPattern> {
        let name = self.patterns.allow(name)?;
        if ALWAYS_REMOVED_RESPONSE_HEADERS.contains(&name.as_str()) {
            return Err(InvalidHeaderPattern(name.as_str().to_owned()));
        }
        self.patterns.push_allowed(name);
        Ok(self)
    }

    /// Whether `name` is removed (ignoring what a `Connection` header names).
    pub fn matches(&self, name: &HeaderName) -> bool {
        let n = canonical_header_name(name.as_str());
        ALWAYS_REMOVED_RESPONSE_HEADERS.contains(&n.as_ref()) || self.patterns.matches(&n)
    }

    /// Removes from `headers` every matching header (all its values) and every header
    /// the response's `Connection` names. Use it on trailers too.
    pub fn remove_from(&self, headers: &mut HeaderMap) {
        let connection_named: Vec<HeaderName> = headers
            .get_all(http::header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok())
            .collect();
        let gone: Vec<HeaderName> = headers
            .keys()
            .filter(|k| self.matches(k))
            .cloned()
            .chain(connection_named)
            .collect();
        for name in gone {
            headers.remove(name);
        }
    }

    /// The exact names removed besides [`ALWAYS_REMOVED_RESPONSE_HEADERS`] (lower case).
    pub fn names(&self) -> &[HeaderName] {
        &self.patterns.names
    }

    /// The prefixes removed (lower case).
    pub fn prefixes(&self) -> &[String] {
        &self.patterns.prefixes
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn name(s: &str) -> HeaderName {
        HeaderName::from_bytes(s.as_bytes()).unwrap()
    }

    #[test]
    fn defaults_cover_the_reviewed_headers() {
        let u = UntrustedHeaders::default();
        for h in [
            "X-Forwarded-Client-Cert",
            "X-Forwarded-User",
            "X-Remote-User",
            "X-SSL-Client-S-DN",
            "X-User-Id",
            "True-Client-IP",
            "X-Client-IP",
            "X-Original-URL",
            "X-Forwarded-Port",
            "X-Forwarded-Prefix",
            "Via",
            "X-Forwarded-For",
            "Forwarded",
            "X-Real-IP",
            "X-Auth-Request-User",
            "X-Auth-Request-Access-Token",
            "X-HTTP-Method-Override",
        ] {
            assert!(u.matches(&name(h)), "{h}");
        }
        for h in [
            "accept",
            "content-type",
            "mcp-session-id",
            "mcp-protocol-version",
            "last-event-id",
            "x-request-id",
            "user-agent",
        ] {
            assert!(!u.matches(&name(h)), "{h}");
        }
        // Every default is lower case and a valid name.
        for h in DEFAULT_UNTRUSTED_HEADERS
            .iter()
            .chain(DEFAULT_UNTRUSTED_PREFIXES)
            .chain(DEFAULT_CREDENTIAL_HEADERS)
        {
            assert_eq!(name(h).as_str(), *h);
        }
    }

    #[test]
    fn xfcc_values_are_valid_header_values() {
        let id = crate::ClientCertIdentity {
            common_name: None,
            subject: "CN=a\"b;c\\d,O=Ex\u{e9}\r\n".into(),
            issuer: String::new(),
            dns_names: vec!["a.example".into()],
            uris: vec![],
            serial: String::new(),
            fingerprint_sha256: [0; 32],
            der: Default::default(),
        };
        let v = xfcc_value(&id);
        assert!(http::HeaderValue::from_str(&v).is_ok(), "{v}");
        assert!(
            v.ends_with(r#";Subject="CN=a\"b;c\\d,O=Ex%C3%A9%0D%0A";DNS=a.example"#),
            "{v}"
        );
    }

    #[test]
    fn strip_and_allow() {
        let u = UntrustedHeaders::default()
            .strip("X-Tenant")
            .unwrap()
            .strip("X-Internal-*")
            .unwrap()
            .allow("Via")
            .unwrap()
            .allow("X-Forwarded-Prefix")
            .unwrap();
        assert!(u.matches(&name("x-tenant")));
        assert!(u.matches(&name("x-internal-role")));
        assert!(!u.matches(&name("via")));
        assert!(!u.matches(&name("x-forwarded-prefix")));
        assert!(u.matches(&name("x-forwarded-host")));
        for bad in [
            " X-Tenant",
            "X-Tenant ",
            "",
            "X Tenant",
            "X-Tenant:",
            "*",
            " X-*",
        ] {
            assert!(UntrustedHeaders::none().strip(bad).is_err(), "{bad:?}");
        }
        assert!(UntrustedHeaders::none().allow("X-*").is_err());
        assert!(!UntrustedHeaders::none().matches(&name("x-remote-user")));
    }

    #[test]
    fn underscore_spellings_are_the_same_name() {
        let u = UntrustedHeaders::default();
        for h in [
            "X_Forwarded_User",
            "X_MCP_Principal",
            "X_Remote_User",
            "x-remote_user",
            "X_SSL_Client_S_DN",
            "x_custom",
            "_method",
        ] {
            assert!(u.matches(&name(h)), "{h}");
        }
        // Without the blanket drop, the lists still match `_` as `-`.
        let u = UntrustedHeaders::default()
            .strip_underscored(false)
            .strip("X_Tenant")
            .unwrap();
        for h in [
            "x_forwarded_user",
            "x-mcp_principal",
            "x_tenant",
            "x-tenant",
        ] {
            assert!(u.matches(&name(h)), "{h}");
        }
        assert!(!u.matches(&name("x_custom")));
        let u = UntrustedHeaders::default()
            .strip_underscored(false)
            .allow("X-Forwarded-Prefix")
            .unwrap();
        assert!(!u.matches(&name("x_forwarded_prefix")));
        assert!(same_header_name("X_API_KEY", "x-api-key"));
        assert!(!same_header_name("x-api-key", "x-api-kez"));
        assert!(header_name_in(
            "x_auth_token",
            &default_credential_headers()
        ));
    }

    #[test]
    fn front_end_identity_headers_are_untrusted() {
        let u = UntrustedHeaders::default();
        for h in [
            "Remote-Groups",
            "Remote-Email",
            "Remote-Name",
            "X-authentik-username",
            "X-authentik-groups",
            "Cf-Access-Authenticated-User-Email",
            "Cf-Access-Jwt-Assertion",
            "X-Pomerium-Jwt-Assertion",
            "X-Pomerium-Claim-Email",
            "X-Goog-IAP-JWT-Assertion",
            "Client-IP",
            "Impersonate-User",
            "Impersonate-Group",
            "Impersonate-Extra-Scopes",
            "X-MS-Token-AAD-ID-Token",
            "X-MS-Token-AAD-Access-Token",
            "X-MS-Client-Principal-Name",
            "SSL-Client-Subject-DN",
            "SSL-Client-Cert",
            "X-Client-Cert-DN",
            "X-Client-Certificate-Subject",
            "X-Override-URL",
            "X-Auth-User",
            "X-Auth-Groups",
            "X-Roles",
            "X-Groups",
        ] {
            assert!(u.matches(&name(h)), "{h}");
        }
    }

    #[test]
    fn upstream_response_headers() {
        let f = UpstreamResponseHeaders::default();
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("access-control-allow-origin", "*"),
            ("access-control-allow-origin", "https://evil.example"),
            ("access-control-allow-credentials", "true"),
            ("access_control_max_age", "1"),
            ("www-authenticate", "Basic realm=\"u\""),
            ("refresh", "0; url=https://evil.example/"),
            ("alt-svc", "h3=\":443\""),
            ("clear-site-data", "\"*\""),
            ("location", "https://evil.example/"),
            ("set-cookie", "a=b"),
            ("set-login", "logged-in"),
            ("speculation-rules", "\"/rules.json\""),
            ("cross-origin-opener-policy", "unsafe-none"),
            ("cross_origin_embedder_policy", "unsafe-none"),
            ("accept-ch", "Sec-CH-UA"),
            ("sourcemap", "https://evil.example/x.map"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
            ("mcp-session-id", "s"),
            ("x-custom", "kept"),
        ] {
            h.append(name(k), v.parse().unwrap());
        }
        f.remove_from(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-type", "mcp-session-id", "x-custom"]);
        // Configurable, never for what is always removed.
        let f = UpstreamResponseHeaders::default()
            .allow("Access-Control-Allow-Origin")
            .unwrap()
            .allow("location")
            .unwrap()
            .strip("X-Custom")
            .unwrap();
        assert!(!f.matches(&name("access-control-allow-origin")));
        assert!(f.matches(&name("access-control-allow-credentials")));
        assert!(!f.matches(&name("location")));
        assert!(f.matches(&name("x_custom")));
        for bad in [
            "Set-Cookie",
            "transfer-encoding",
            "Access-Control-*",
            "",
            "a b",
        ] {
            assert!(
                UpstreamResponseHeaders::default().allow(bad).is_err(),
                "{bad}"
            );
        }
        let none = UpstreamResponseHeaders::none();
        assert!(none.matches(&name("set-cookie")));
        assert!(!none.matches(&name("www-authenticate")));
        for h in DEFAULT_UPSTREAM_RESPONSE_HEADERS
            .iter()
            .chain(DEFAULT_UPSTREAM_RESPONSE_PREFIXES)
            .chain(ALWAYS_REMOVED_RESPONSE_HEADERS)
        {
            assert_eq!(name(h).as_str(), *h);
        }
    }

    #[test]
    fn principal_values_are_visible_ascii() {
        let v = |s: &str| principal_value(s).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(v("alice").as_deref(), Some("alice"));
        assert_eq!(v("jösé 100%").as_deref(), Some("j%C3%B6s%C3%A9%20100%25"));
        assert_eq!(
            v("a\r\nX-Injected: 1").as_deref(),
            Some("a%0D%0AX-Injected:%201")
        );
        assert_eq!(v("admin ").as_deref(), Some("admin%20"));
        assert_eq!(v("   ").as_deref(), Some("%20%20%20"));
        assert_eq!(v("a, b;c\"d").as_deref(), Some("a%2C%20b%3Bc%22d"));
        assert_eq!(v(""), None);
    }

    /// Percent-decodes a principal value (the inverse of [`principal_value`]).
    fn decode(v: &str) -> Vec<u8> {
        let b = v.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    proptest::proptest! {
        /// Distinct ids give distinct values (the encoding decodes back to the id), and
        /// every value is one visible-ASCII token without `,`, `;`, `"` or space.
        #[test]
        fn principal_value_is_injective_and_list_safe(a in "\\PC{1,24}", b in "[ ,;%\"a-c\u{e9}\t]{1,8}") {
            for id in [a.as_str(), b.as_str()] {
                let v = principal_value(id).unwrap();
                let s = v.to_str().unwrap();
                proptest::prop_assert!(s.bytes().all(|c| (0x21..=0x7e).contains(&c)));
                proptest::prop_assert!(!s.contains([',', ';', '"', ' ']));
                proptest::prop_assert_eq!(decode(s), id.as_bytes().to_vec());
            }
            if a != b {
                proptest::prop_assert_ne!(principal_value(&a), principal_value(&b));
            }
        }

        /// `_` and `-` in any mix, in any case, match the same listed name.
        #[test]
        fn any_mix_of_separators_matches(idx in 0..DEFAULT_UNTRUSTED_HEADERS.len(), mask in proptest::prelude::any::<u64>()) {
            let u = UntrustedHeaders::default().strip_underscored(false);
            let n: String = DEFAULT_UNTRUSTED_HEADERS[idx].bytes().enumerate().map(|(i, c)| {
                let c = if c == b'-' && mask >> (i % 64) & 1 == 1 { b'_' } else { c };
                (if mask >> ((i + 7) % 64) & 1 == 1 { c.to_ascii_uppercase() } else { c }) as char
            }).collect();
            proptest::prop_assert!(u.matches(&name(&n)), "{}", n);
        }
    }
}
