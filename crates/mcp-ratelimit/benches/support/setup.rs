//! The services compared, shared by the criterion bench and the `abba` callgrind example:
//! an empty inner service, our layer and tower_governor's with the same key (the peer IP
//! from `ConnectInfo`) and the same quota, so large that nothing is limited.

use std::convert::Infallible;

use axum::body::Body;
use http::{Request, Response};
use mcp_ratelimit::{RateLimitConfig, RateLimitLayer};
use tower::Service;
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;

/// The burst of both quotas: nothing is ever limited.
pub const BURST: u32 = 1_000_000_000;

/// The service behind the limiters: an empty 200.
pub fn inner() -> impl Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
+ Send {
    tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::empty()))
    })
}

/// Our layer, keyed by client IP, keeping at most `max_keys` clients.
pub fn ours(max_keys: usize) -> RateLimitLayer {
    let mut c = RateLimitConfig::per_second(1_000_000.0, BURST);
    c.max_keys = max_keys;
    RateLimitLayer::new(c).unwrap()
}

/// tower_governor's layer with the peer IP key.
pub fn governor_layer() -> GovernorLayer<
    tower_governor::key_extractor::PeerIpKeyExtractor,
    governor::middleware::NoOpMiddleware<governor::clock::QuantaInstant>,
    Body,
> {
    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1000)
        .burst_size(BURST)
        .finish()
        .unwrap();
    GovernorLayer::new(config)
}
