//! axum extractors for the values the layers put in the request extensions.
//!
//! A handler takes [`Principal`], [`McpRequest`], [`ClientAddr`] or [`TlsInfo`] as an
//! argument (or `Option<...>` when it may be absent). A missing required value means a
//! layer is not installed: the extractor answers with a [`Rejection`] (401 for the
//! principal, 500 for the others, which are configuration errors).
//!
//! ```
//! use axum::{Router, routing::post};
//! use mcp_core::Principal;
//!
//! async fn whoami(principal: Principal) -> String {
//!     principal.id().to_owned()
//! }
//! let app: Router = Router::new().route("/whoami", post(whoami));
//! ```

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use http::request::Parts;

use crate::{ClientAddr, McpRequest, Principal, Rejection, RejectionReason, TlsInfo};

macro_rules! extension_extractor {
    ($ty:ty, $missing:expr) => {
        impl<S: Send + Sync> FromRequestParts<S> for $ty {
            type Rejection = Rejection;

            async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
                parts
                    .extensions
                    .get::<$ty>()
                    .cloned()
                    .ok_or_else(|| $missing)
            }
        }

        impl<S: Send + Sync> OptionalFromRequestParts<S> for $ty {
            type Rejection = std::convert::Infallible;

            async fn from_request_parts(
                parts: &mut Parts,
                _: &S,
            ) -> Result<Option<Self>, Self::Rejection> {
                Ok(parts.extensions.get::<$ty>().cloned())
            }
        }
    };
}

extension_extractor!(Principal, Rejection::new(RejectionReason::AuthFailed));
extension_extractor!(
    McpRequest,
    Rejection::new(RejectionReason::Internal).with_message("MCP request was not parsed")
);
extension_extractor!(
    ClientAddr,
    Rejection::new(RejectionReason::Internal).with_message("client address unknown")
);
extension_extractor!(
    TlsInfo,
    Rejection::new(RejectionReason::Internal).with_message("not a TLS connection")
);
