//! Request headers that a reverse proxy must not pass on from the client.
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

use http::{HeaderMap, HeaderName};

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
    "x-iap-jwt-assertion",
    // client certificates
    "x-client-cert",
    "x-client-certificate",
    "x-client-verify",
    "x-client-dn",
    "ssl-client-cert",
    "ssl-client-verify",
    "x-arr-clientcert",
    "x-tls-client-cert",
    // client addresses
    "forwarded",
    "x-real-ip",
    "true-client-ip",
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
];

/// The prefixes [`UntrustedHeaders::default`] removes (lower case): every `X-Forwarded-*`
/// (`-For`, `-Host`, `-Proto`, `-Port`, `-Prefix`, `-User`, `-Email`, `-Client-Cert`,
/// ...), oauth2-proxy's `X-Auth-Request-*`, `X-SSL-*` and `X-Remote-Extra-*`, Envoy's
/// `X-Envoy-*`, and the identity headers of cloud front ends (`X-Goog-Authenticated-*`,
/// `X-MS-Client-Principal*`, `X-Amzn-Oidc-*`).
pub const DEFAULT_UNTRUSTED_PREFIXES: &[&str] = &[
    "x-forwarded-",
    "x-auth-request-",
    "x-ssl-",
    "x-remote-extra-",
    "x-envoy-",
    "x-goog-authenticated-",
    "x-ms-client-principal",
    "x-amzn-oidc-",
];

/// A header name or prefix that is not valid in a strip or allow list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a header name (an RFC 9110 token, written as is), nor a prefix ending in `*`"
)]
pub struct InvalidHeaderPattern(pub String);

/// Which client request headers a proxy removes before forwarding: exact names and
/// prefixes (see the [module documentation](self)). [`Default`] is the documented list;
/// [`UntrustedHeaders::none`] an empty one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UntrustedHeaders {
    names: Vec<HeaderName>,
    prefixes: Vec<String>,
    allowed: Vec<HeaderName>,
}

impl Default for UntrustedHeaders {
    fn default() -> Self {
        Self {
            names: DEFAULT_UNTRUSTED_HEADERS
                .iter()
                .map(|h| HeaderName::from_static(h))
                .collect(),
            prefixes: DEFAULT_UNTRUSTED_PREFIXES
                .iter()
                .map(|p| (*p).to_owned())
                .collect(),
            allowed: Vec::new(),
        }
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
        .map(|n| (n, prefix))
        .map_err(|_| bad())
}

impl UntrustedHeaders {
    /// An empty list (nothing removed).
    pub fn none() -> Self {
        Self {
            names: Vec::new(),
            prefixes: Vec::new(),
            allowed: Vec::new(),
        }
    }

    /// Also removes `pattern`: a header name (any case), or a prefix ending in `*`
    /// (`X-Internal-*`).
    pub fn strip(mut self, pattern: &str) -> Result<Self, InvalidHeaderPattern> {
        let (name, prefix) = parse_pattern(pattern)?;
        if prefix {
            self.prefixes.push(name.as_str().to_owned());
        } else {
            self.allowed.retain(|a| a != name);
            self.names.push(name);
        }
        Ok(self)
    }

    /// Forwards the header `name` after all, even when a default name or prefix covers
    /// it (this weakens the default: log it). Prefixes are not accepted here.
    pub fn allow(mut self, name: &str) -> Result<Self, InvalidHeaderPattern> {
        if name.ends_with('*') {
            return Err(InvalidHeaderPattern(name.to_owned()));
        }
        let (name, _) = parse_pattern(name)?;
        self.names.retain(|n| n != name);
        self.allowed.push(name);
        Ok(self)
    }

    /// Whether `name` is removed.
    pub fn matches(&self, name: &HeaderName) -> bool {
        if self.names.contains(name) {
            return true;
        }
        let n = name.as_str();
        self.prefixes.iter().any(|p| n.starts_with(p.as_str())) && !self.allowed.contains(name)
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
        &self.names
    }

    /// The prefixes removed (lower case).
    pub fn prefixes(&self) -> &[String] {
        &self.prefixes
    }
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
}
