//! Header redaction before any trace layer.
//!
//! [`sensitive_headers_layer`] returns tower-http's `SetSensitiveHeadersLayer` for the
//! default sensitive headers ([`DEFAULT_SENSITIVE_HEADERS`]) plus any extra ones: it marks
//! their values sensitive, so that `http`'s `Debug` prints `Sensitive` and tower-http's
//! `TraceLayer` (and any other layer that logs headers) never prints the value.
//!
//! A layer sees the request on the way in and the response on the way out, so one
//! position cannot protect both from a trace layer:
//!
//! - request headers (`authorization`, `cookie`, `x-api-key`, ...) must be marked
//!   **outside** every trace layer: [`sensitive_headers_layer`], outermost;
//! - response headers (`set-cookie` from the upstream) must be marked **inside** every
//!   trace layer, next to the handler or the proxy: [`sensitive_response_headers_layer`].
//!
//! Audit events render these headers as the mask regardless.
//!
//! ```
//! use tower::ServiceBuilder;
//! use tower_http::trace::TraceLayer;
//! use mcp_audit::{sensitive_headers_layer, sensitive_response_headers_layer};
//!
//! let extra = [http::HeaderName::from_static("x-tenant-secret")];
//! let stack = ServiceBuilder::new()
//!     .layer(sensitive_headers_layer(extra.clone()))          // outermost
//!     .layer(TraceLayer::new_for_http())
//!     .layer(sensitive_response_headers_layer(extra));        // innermost
//! # drop(stack);
//! ```

use http::{HeaderMap, HeaderName};
use tower_http::sensitive_headers::{SetSensitiveHeadersLayer, SetSensitiveResponseHeadersLayer};

pub use crate::config::DEFAULT_SENSITIVE_HEADERS;

/// The default sensitive header names, for tracing: [`DEFAULT_SENSITIVE_HEADERS`] and
/// [`HASHED_HEADERS`](crate::config::HASHED_HEADERS) (`mcp-session-id`, which audit events
/// show as a hash prefix).
pub fn default_sensitive_headers() -> Vec<HeaderName> {
    DEFAULT_SENSITIVE_HEADERS
        .iter()
        .chain(crate::config::HASHED_HEADERS)
        .map(|h| HeaderName::from_static(h))
        .collect()
}

/// A layer marking the default sensitive headers plus `extra` as sensitive, on requests
/// and responses.
pub fn sensitive_headers_layer(
    extra: impl IntoIterator<Item = HeaderName>,
) -> SetSensitiveHeadersLayer {
    let mut names = default_sensitive_headers();
    for h in extra {
        if !names.contains(&h) {
            names.push(h);
        }
    }
    SetSensitiveHeadersLayer::new(names)
}

/// A layer marking the default sensitive headers plus `extra` as sensitive on responses
/// only: place it inside every trace layer (next to the handler or the proxy).
pub fn sensitive_response_headers_layer(
    extra: impl IntoIterator<Item = HeaderName>,
) -> SetSensitiveResponseHeadersLayer {
    let mut names = default_sensitive_headers();
    for h in extra {
        if !names.contains(&h) {
            names.push(h);
        }
    }
    SetSensitiveResponseHeadersLayer::new(names)
}

/// Marks sensitive every value in `headers` whose name is in `names` compared with `_`
/// read as `-` (`X_API_Key` is `x-api-key` to a CGI reader), or suggests a secret
/// ([`crate::mask::header_name_suggests_secret`]). tower-http's layers match exact
/// names; call this (in a `map_request`, outermost) to cover every spelling.
///
/// ```
/// use http::{HeaderMap, HeaderName};
/// let mut h = HeaderMap::new();
/// h.insert("x_mcp_key", "k".parse().unwrap());
/// h.insert("x-vault-token", "t".parse().unwrap());
/// h.insert("accept", "*/*".parse().unwrap());
/// mcp_audit::headers::mark_sensitive(&mut h, &[HeaderName::from_static("x-mcp-key")]);
/// assert!(h["x_mcp_key"].is_sensitive() && h["x-vault-token"].is_sensitive());
/// assert!(!h["accept"].is_sensitive());
/// ```
pub fn mark_sensitive(headers: &mut HeaderMap, names: &[HeaderName]) {
    for (name, value) in headers.iter_mut() {
        let n = name.as_str();
        if mcp_core::headers::header_name_in(n, names)
            || crate::mask::header_name_suggests_secret(n)
        {
            value.set_sensitive(true);
        }
    }
}
