//! Security middleware for MCP (Model Context Protocol) servers and gateways.
//!
//! This umbrella crate re-exports each crate of the suite behind a cargo feature of the
//! same name, so one dependency brings in what a service needs:
//!
//! | feature     | crate            | what it does                                              |
//! |-------------|------------------|-----------------------------------------------------------|
//! | (always)    | [`core`]         | the MCP request parsed once, `Principal`, `ClientAddr`, `Rejection` |
//! | `auth`      | `mcp-auth`       | API key, bearer/JWT, basic and client-certificate authentication, authorization |
//! | `ratelimit` | `mcp-ratelimit`  | per-client GCRA rate limits, in memory or shared through Redis |
//! | `sanitize`  | `mcp-sanitize`   | JSON-RPC validation, argument rules, SSRF and Origin guards, security headers |
//! | `audit`     | `mcp-audit`      | one masked, hash-chained audit event per request          |
//! | `tls`       | `mcp-tls`        | rustls server configuration, mTLS, hot reload, accept loop |
#![forbid(unsafe_code)]

pub use mcp_core as core;

// The README's Rust examples compile (and run) as doc tests.
#[cfg(all(doctest, feature = "auth"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(feature = "audit")]
pub use mcp_audit as audit;
#[cfg(feature = "auth")]
pub use mcp_auth as auth;
#[cfg(feature = "ratelimit")]
pub use mcp_ratelimit as ratelimit;
#[cfg(feature = "sanitize")]
pub use mcp_sanitize as sanitize;
#[cfg(feature = "tls")]
pub use mcp_tls as tls;
