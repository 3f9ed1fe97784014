//! Runs N requests through one service in-process, for instruction counts under callgrind:
//! `cargo build --release -p mcp-ratelimit --example abba`, then
//! `valgrind --tool=callgrind --toggle-collect='abba::run*' target/release/examples/abba
//! <ours|governor|none>[-clientaddr] <N>`.
//! Only `run` is counted (not the layer's construction): the per-request cost of a layer is
//! the total divided by N, minus the same figure for `none`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};

use axum::body::Body;
use axum::extract::ConnectInfo;
use http::{Request, Response};
use mcp_core::ClientAddr;
use tower::{Layer, Service, ServiceExt};

#[path = "../benches/support/setup.rs"]
mod setup;
use setup::{governor_layer, inner, ours};

fn request(client_addr: bool) -> Request<Body> {
    let mut r = Request::new(Body::empty());
    let peer = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 40000));
    r.extensions_mut().insert(ConnectInfo(peer));
    if client_addr {
        // As behind mcp_core::ClientAddrLayer: the resolved address beside the peer's.
        r.extensions_mut().insert(ClientAddr::direct(peer));
    }
    r
}

/// Not inlined, so that callgrind can count this function alone
/// (`--toggle-collect='abba::run*'`): the layer's construction stays out of the count.
#[inline(never)]
fn run<S, B>(rt: &tokio::runtime::Runtime, svc: S, n: u64, client_addr: bool)
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone,
{
    rt.block_on(async {
        for _ in 0..n {
            let s = svc.clone();
            black_box(s.oneshot(request(client_addr)).await.unwrap().status());
        }
    });
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "ours".into());
    let n: u64 = args.next().map_or(200_000, |s| s.parse().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    // `-clientaddr`: a ClientAddr beside ConnectInfo (tower_governor's PeerIpKeyExtractor
    // ignores it; ours reads it first).
    let (which, client_addr) = match which.strip_suffix("-clientaddr") {
        Some(w) => (w.to_owned(), true),
        None => (which, false),
    };
    match which.as_str() {
        "ours" => run(&rt, ours(100_000).layer(inner()), n, client_addr),
        "governor" => run(&rt, governor_layer().layer(inner()), n, client_addr),
        "none" => run(&rt, inner(), n, client_addr),
        other => panic!("unknown service {other}: ours, governor or none"),
    }
}
