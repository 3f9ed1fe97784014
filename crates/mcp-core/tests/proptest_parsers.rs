//! Property tests: no input makes the parsers panic, and what they extract is consistent.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt, LengthLimitError, Limited, StreamBody};
use hyper::body::Frame;
use mcp_core::{
    ForwardedHeader, JsonRpcId, McpHeaders, McpRequest, ReadBodyError, Rejection, RejectionReason,
    TrustedProxies, read_body,
};
use proptest::prelude::*;

/// A piece of a generated body: data, trailers, or a failure of the stream.
#[derive(Debug, Clone)]
enum Piece {
    Data(Vec<u8>),
    Trailers,
    Fail,
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Piece::Data),
        1 => Just(Piece::Trailers),
        1 => Just(Piece::Fail),
    ]
}

fn body(
    pieces: &[Piece],
) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>>> {
    let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = pieces
        .iter()
        .map(|p| match p {
            Piece::Data(d) => Ok(Frame::data(Bytes::from(d.clone()))),
            Piece::Trailers => Ok(Frame::trailers(HeaderMap::new())),
            Piece::Fail => Err(std::io::Error::other("broken")),
        })
        .collect();
    StreamBody::new(futures_util::stream::iter(frames))
}

/// What a body reads as: the bytes, or which error.
#[derive(Debug, PartialEq)]
enum Read {
    Bytes(Bytes),
    TooLarge,
    Broken,
}

/// The reference: `http_body_util::Limited` and `collect`, as `read_body` was first written.
async fn read_reference(pieces: &[Piece], limit: usize) -> Read {
    match Limited::new(body(pieces), limit).collect().await {
        Ok(c) => Read::Bytes(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Read::TooLarge,
        Err(_) => Read::Broken,
    }
}

async fn read_fast(pieces: &[Piece], limit: usize, declared: Option<usize>) -> Read {
    let mut h = HeaderMap::new();
    if let Some(n) = declared {
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    match read_body(&h, body(pieces), limit).await {
        Ok(b) => Read::Bytes(b),
        Err(ReadBodyError::TooLarge { limit: l }) => {
            assert_eq!(l, limit);
            Read::TooLarge
        }
        Err(ReadBodyError::Body(_)) => Read::Broken,
    }
}

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

    /// `read_body` (first frame kept without a copy, later frames joined) reads every
    /// chunking of every body exactly as `Limited` + `collect` does: the same bytes, the
    /// same "too large" at the same limit, the same failure of a broken stream.
    #[test]
    fn read_body_agrees_with_limited_collect(
        pieces in proptest::collection::vec(piece(), 0..8),
        limit in 0usize..200,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let reference = rt.block_on(read_reference(&pieces, limit));
        let fast = rt.block_on(read_fast(&pieces, limit, None));
        prop_assert_eq!(&fast, &reference);
        // A declared length over the limit is refused before anything is read; one within
        // changes nothing.
        let total: usize = pieces.iter().map(|p| match p { Piece::Data(d) => d.len(), _ => 0 }).sum();
        prop_assert_eq!(rt.block_on(read_fast(&pieces, limit, Some(limit + 1))), Read::TooLarge);
        if total <= limit {
            prop_assert_eq!(rt.block_on(read_fast(&pieces, limit, Some(total))), reference);
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

/// Arbitrary JSON values (objects without duplicates, as `serde_json::Value` holds them).
fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        "[\\u{0}-\\u{1f}\"\\\\\u{17f}\u{212a}]{0,4}".prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("[a-zA-Z_\u{17f}]{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Where a JSON text can hold a nested value: wraps `inner` in `depth` levels of arrays
/// and objects.
fn wrap(inner: String, path: &[(bool, u8)]) -> String {
    path.iter().rev().fold(inner, |acc, (array, n)| {
        if *array {
            format!("[{}{acc}]", "0,".repeat(*n as usize))
        } else {
            format!("{{\"w{n}\":1,\"v\":{acc}}}")
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// A document without duplicate keys (and no NUL in a key) reads as serde_json reads
    /// it, whatever its shape.
    #[test]
    fn strict_parse_agrees_with_serde_json(v in arb_json()) {
        let text = serde_json::to_vec(&v).unwrap();
        let strict = mcp_core::json::from_slice(&text);
        let nul_key = text.windows(6).any(|w| w == b"\\u0000");
        match strict {
            Ok(s) => {
                // (Compared with serde_json's reading of the text, not with `v`: without
                // its float_roundtrip feature a float may come back one ulp away.)
                prop_assert_eq!(&s, &serde_json::from_slice::<serde_json::Value>(&text).unwrap());
            }
            Err(e) => {
                // Only a NUL in a key (or a string, which the generator may put in a key).
                prop_assert!(nul_key, "{e:?}: {}", String::from_utf8_lossy(&text));
                prop_assert!(matches!(e, mcp_core::JsonError::Ambiguous(mcp_core::Ambiguity::NulInKey { .. })), "{:?}", e);
            }
        }
    }

    /// Arbitrary bytes: the strict parse fails as invalid JSON exactly when serde_json
    /// fails, and otherwise reads the same value or refuses an ambiguity serde_json
    /// passed over.
    #[test]
    fn strict_parse_of_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let serde = serde_json::from_slice::<serde_json::Value>(&bytes);
        match (mcp_core::json::from_slice(&bytes), serde) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(mcp_core::JsonError::Invalid(_)), Err(_)) => {}
            (Err(mcp_core::JsonError::Ambiguous(_)), Ok(_)) => {}
            (a, b) => prop_assert!(false, "{:?} vs {:?}", a, b),
        }
    }

    /// Any object with a repeated key is refused, at any depth, whatever the values and
    /// the members between the two, with the path of the second one.
    #[test]
    fn a_repeated_key_is_always_refused(
        key in "[a-z\u{17f}]{1,6}",
        first in arb_json(),
        second in arb_json(),
        between in proptest::collection::btree_map("[A-Z]{1,4}", arb_json(), 0..3),
        path in proptest::collection::vec((any::<bool>(), 0u8..3), 0..6),
        escaped in any::<bool>(),
    ) {
        let mut members = vec![format!("{}:{}", serde_json::to_string(&key).unwrap(), first)];
        for (k, v) in &between {
            members.push(format!("{}:{v}", serde_json::to_string(k).unwrap()));
        }
        // The repeat may be written with an escape: keys compare once decoded.
        let again = if escaped {
            let c = key.chars().next().unwrap();
            format!("\"\\u{:04x}{}\"", c as u32, &key[c.len_utf8()..])
        } else {
            serde_json::to_string(&key).unwrap()
        };
        members.push(format!("{again}:{second}"));
        let text = wrap(format!("{{{}}}", members.join(",")), &path);
        match mcp_core::json::from_slice(text.as_bytes()) {
            Err(mcp_core::JsonError::Ambiguous(mcp_core::Ambiguity::DuplicateKey { path: p })) => {
                prop_assert!(p.starts_with('$'), "{}", p);
            }
            other => prop_assert!(false, "{}: {:?}", text, other),
        }
        // serde_json alone takes it (the hole this closes).
        prop_assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
    }

    /// `Mcp-Name`'s `=?base64?...?=` form decodes exactly as the `base64` crate's strict
    /// standard engine does (then as UTF-8), and a plain value is itself.
    #[test]
    fn mcp_name_base64_form_decodes_as_the_base64_crate(
        s in "[A-Za-z0-9+/=]{0,16}",
        bytes in proptest::collection::vec(any::<u8>(), 0..24),
    ) {
        use base64::Engine as _;
        let std = base64::engine::general_purpose::STANDARD;
        let ours = mcp_core::request::decode_name_header(&format!("=?base64?{s}?=")).map(|c| c.into_owned());
        let reference = std.decode(&s).ok().and_then(|b| String::from_utf8(b).ok());
        prop_assert_eq!(ours, reference);
        let encoded = std.encode(&bytes);
        let ours = mcp_core::request::decode_name_header(&format!("=?base64?{encoded}?=")).map(|c| c.into_owned());
        prop_assert_eq!(ours, String::from_utf8(bytes).ok());
        let plain = mcp_core::request::decode_name_header(&s).map(|c| c.into_owned());
        prop_assert_eq!(plain, Some(s.clone()));
    }
}
