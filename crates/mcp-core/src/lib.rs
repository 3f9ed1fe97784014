//! The shared vocabulary of the MCP security suite.
//!
//! Every layer of the suite depends on this crate and on no other crate of the suite.
//! Layers talk to each other only through the typed values defined here, carried in
//! request and response extensions:
//!
//! - [`McpRequest`]: the request body parsed once as JSON-RPC 2.0 by [`ParseLayer`]
//!   (method, id, tool / resource / prompt, arguments, batch or not) plus the MCP
//!   transport headers, and whether `Mcp-Method` / `Mcp-Name` disagree with the body.
//! - [`Principal`]: who the caller is and how that was proven, with its qualified id
//!   (`apikey:ops`, `jwt:<issuer>#<sub>`, ...), and [`PrincipalSources`] to resolve the
//!   principal entries of configuration.
//! - [`ClientAddr`]: the peer address and the client IP resolved through
//!   [`TrustedProxies`] only; [`ip_key`] turns a client IP into the key of per-address
//!   state (IPv6 grouped by prefix, [`DEFAULT_IPV6_PREFIX`] = /64; IPv4 per address).
//! - [`Rejection`]: status + JSON-RPC error body + headers, the one way a layer says no,
//!   leaving a typed [`Denial`] in the response extensions for outer layers.
//! - [`TlsInfo`] and [`ClientCertIdentity`]: what the TLS accept loop learnt.
//! - [`RequestFacts`]: the principal and the parsed request, noted where an outer layer
//!   (the audit trail) can read them even if the request is abandoned before a response.
//! - [`ConnectionEvents`] and [`ConnectionObserver`]: what a server tells the layers of
//!   responses it cut (write timeout) and connections it refused (per-client cap).
//! - [`TimeoutBody`]: a body bounded in its first frame, its idle gaps and its whole
//!   length, which says in a [`BodyStallSlot`] why it was cut ([`BodyStall`]).
//! - [`DrainLayer`]: after a response that left the request body unread (a refusal),
//!   reads and discards a bounded rest of it so the HTTP/1.x connection stays usable,
//!   or says `Connection: close`.
//!
//! ```
//! use axum::{Router, routing::post};
//! use mcp_core::{ClientAddrLayer, McpRequest, ParseLayer, TrustedProxies};
//!
//! async fn handler(req: McpRequest) -> String {
//!     format!("{:?} {:?}", req.method(), req.tool_name())
//! }
//!
//! let app: Router = Router::new()
//!     .route("/mcp", post(handler))
//!     .layer(ParseLayer::new().max_body_bytes(1 << 20))
//!     .layer(ClientAddrLayer::new(TrustedProxies::none()));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod breaker;
pub mod client_addr;
pub mod connection;
pub mod drain;
#[cfg(feature = "axum")]
pub mod extract;
pub mod facts;
pub mod headers;
pub mod json;
pub mod parse;
pub mod principal;
pub mod rejection;
pub mod request;
pub mod timeout_body;
pub mod tls;
pub mod transport;

pub use client_addr::{
    ClientAddr, ClientAddrLayer, DEFAULT_IPV6_PREFIX, ForwardedHeader, PeerAddr, TrustedProxies,
    ip_key,
};
pub use connection::{
    CloseReason, ConnectionEvents, ConnectionObserver, ConnectionRefusal, OnWritten, RefusalReason,
};
pub use drain::{DEFAULT_DRAIN_BYTES, DEFAULT_DRAIN_TIMEOUT, Drain, DrainBody, DrainLayer};
pub use facts::RequestFacts;
pub use headers::{InvalidHeaderPattern, UntrustedHeaders, UpstreamResponseHeaders};
pub use json::{Ambiguity, JsonError};
pub use parse::{
    BoxError, DEFAULT_BODY_LIMIT, DEFAULT_BODY_TIMEOUT, Parse, ParseLayer, ReadBodyError,
    control_char_rejection, header_mismatch_rejection, read_body,
};
pub use principal::{AuthMethod, Principal, PrincipalEntry, PrincipalSources};
pub use rejection::{Denial, Rejection, RejectionReason, codes};
pub use request::{
    HeaderMismatch, JsonRpcId, McpHeaders, McpMessage, McpRequest, MessageKind, Target,
};
pub use timeout_body::{BodyStall, BodyStallSlot, BodyTimeout, TimeoutBody};
pub use tls::{ClientCertIdentity, SpiffeIdError, TlsInfo};
pub use transport::{TransportChecks, TransportLayer};

/// The body type the suite's layers hand to inner services (axum's body).
pub use axum_core::body::Body;
