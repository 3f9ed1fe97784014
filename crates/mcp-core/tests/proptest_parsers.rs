//! Property tests: no input makes the parsers panic, and what they extract is consistent.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use mcp_core::{
    ForwardedHeader, JsonRpcId, McpHeaders, McpRequest, Rejection, RejectionReason, TrustedProxies,
};
use proptest::prelude::*;

fn proxies(h: ForwardedHeader) -> TrustedProxies {
    TrustedProxies::new(["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]).with_header(h)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn mcp_request_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(r) = McpRequest::parse(Bytes::from(bytes), McpHeaders::default()) {
            let _ = (r.kind(), r.id(), r.method(), r.target(), r.arguments(), r.header_mismatch());
        }
    }

    #[test]
    fn jsonrpc_shaped_bodies_extract_consistently(
        id in prop_oneof![any::<i64>().prop_map(JsonRpcId::from), "[a-z0-9]{0,12}".prop_map(JsonRpcId::from)],
        method in "[a-z/]{1,20}",
        name in "\\PC{0,20}",
        hdr_method in proptest::option::of("[a-z/]{1,20}"),
    ) {
        let body = serde_json::json!({"jsonrpc":"2.0","id":id,"method":method,"params":{"name":name}});
        let headers = McpHeaders { method: hdr_method.clone(), ..Default::default() };
        let r = McpRequest::parse(Bytes::from(serde_json::to_vec(&body).unwrap()), headers).unwrap();
        prop_assert_eq!(r.id(), Some(&id));
        prop_assert_eq!(r.method(), Some(method.as_str()));
        if method == "tools/call" { prop_assert_eq!(r.tool_name(), Some(name.as_str())); }
        let mismatch = r.header_mismatch().is_some();
        prop_assert_eq!(mismatch, hdr_method.is_some_and(|m| m != method));
        // The rejection echoes the id whatever it is.
        let rej = Rejection::new(RejectionReason::InvalidParams).with_id(r.id().cloned());
        let v: serde_json::Value = serde_json::from_slice(&rej.body_bytes()).unwrap();
        prop_assert_eq!(v["id"].clone(), serde_json::to_value(&id).unwrap());
    }

    #[test]
    fn forwarded_headers_never_panic_and_untrusted_peers_never_change_ip(
        value in "[ -~]{0,200}",
        header in prop_oneof![Just(ForwardedHeader::XForwardedFor), Just(ForwardedHeader::Forwarded), Just(ForwardedHeader::XRealIp)],
        trusted_peer in any::<bool>(),
    ) {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&value) {
            for name in ["x-forwarded-for", "forwarded", "x-real-ip"] {
                h.append(name, v.clone());
            }
        }
        let peer: SocketAddr = if trusted_peer { "10.1.2.3:9".parse().unwrap() } else { "203.0.113.1:9".parse().unwrap() };
        let a = proxies(header).resolve(peer, &h);
        if !trusted_peer {
            prop_assert_eq!(a.ip(), peer.ip());
        }
    }

    #[test]
    fn raw_header_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_bytes(&bytes) {
            h.append("x-forwarded-for", v.clone());
            h.append("forwarded", v.clone());
            h.append("mcp-method", v.clone());
            h.append("mcp-name", v);
        }
        let peer: SocketAddr = "10.0.0.1:1".parse().unwrap();
        for hdr in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded, ForwardedHeader::XRealIp] {
            let _ = proxies(hdr).resolve(peer, &h);
        }
        let _ = McpHeaders::from_headers(&h);
    }
}
