//! Header redaction before any trace layer.
//!
//! [`sensitive_headers_layer`] returns tower-http's `SetSensitiveHeadersLayer` for the
//! default sensitive headers ([`DEFAULT_SENSITIVE_HEADERS`]) plus any extra ones: it marks
//! their values sensitive on the request (and on the response, for `set-cookie`), so that
//! `http`'s `Debug` prints `Sensitive` and tower-http's `TraceLayer` (and any other layer
//! inside it that logs headers) never prints the value. Place it outside every trace
//! layer. Audit events render these headers as the mask regardless.
//!
//! ```
//! use tower::ServiceBuilder;
//! use mcp_audit::sensitive_headers_layer;
//!
//! let stack = ServiceBuilder::new()
//!     .layer(sensitive_headers_layer([http::HeaderName::from_static("x-tenant-secret")]))
//!     // .layer(TraceLayer::new_for_http()) ...
//!     ;
//! # drop(stack);
//! ```

use http::HeaderName;
use tower_http::sensitive_headers::SetSensitiveHeadersLayer;

pub use crate::config::DEFAULT_SENSITIVE_HEADERS;

/// The default sensitive header names.
pub fn default_sensitive_headers() -> Vec<HeaderName> {
    DEFAULT_SENSITIVE_HEADERS
        .iter()
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
