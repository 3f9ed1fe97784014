//! Client keys: built from the request's typed extensions, bounded in size.

use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use http::Request;
use mcp_core::{ClientAddr, Principal};
use sha2::{Digest, Sha256};

use crate::config::KeyPart;

/// Text parts longer than this are replaced by their SHA-256, so that a client cannot make
/// a key (held in memory, sent to Redis) larger than this.
pub const MAX_KEY_PART_LEN: usize = 64;

/// A client key. IP keys are the common case and never allocate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    /// The bucket for requests without a key (`missing_key: shared`).
    Unknown,
    /// The single global bucket.
    Global,
    /// A client IP.
    Ip(IpAddr),
    /// Anything else, encoded without ambiguity (see [`encode_part`]).
    Text(Arc<str>),
}

impl Hash for Key {
    /// Hashes as few bytes as identify the key (the hasher is SipHash with a random key).
    fn hash<H: Hasher>(&self, h: &mut H) {
        match self {
            Self::Unknown => h.write_u8(0),
            Self::Global => h.write_u8(1),
            Self::Ip(IpAddr::V4(a)) => h.write_u32(a.to_bits()),
            Self::Ip(IpAddr::V6(a)) => h.write_u128(a.to_bits()),
            Self::Text(t) => t.hash(h),
        }
    }
}

impl Key {
    /// The key as text for Redis (`i:198.51.100.7`, `g`, `u`, or the encoded text).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn redis_text(&self) -> String {
        match self {
            Self::Unknown => "u".to_owned(),
            Self::Global => "g".to_owned(),
            Self::Ip(ip) => format!("i:{ip}"),
            Self::Text(t) => format!("t:{t}"),
        }
    }
}

/// A peer's IP, an IPv4-mapped IPv6 address as IPv4 (`SocketAddr::ip().to_canonical()`,
/// without the IPv4 round trip through `IpAddr`).
#[inline(always)]
fn peer_ip(a: &std::net::SocketAddr) -> IpAddr {
    match a {
        std::net::SocketAddr::V4(a) => IpAddr::V4(*a.ip()),
        std::net::SocketAddr::V6(a) => a.ip().to_canonical(),
    }
}

/// The client IP of a request: [`ClientAddr`] (resolved through trusted proxies) when
/// present, else the connection's peer address (axum's `ConnectInfo`, or
/// [`mcp_core::PeerAddr`] from the suite's accept loops).
#[inline]
pub(crate) fn client_ip<B>(req: &Request<B>) -> Option<IpAddr> {
    let ext = req.extensions();
    if let Some(a) = ext.get::<ClientAddr>() {
        return Some(a.ip());
    }
    if let Some(axum::extract::ConnectInfo(a)) =
        ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
    {
        return Some(peer_ip(a));
    }
    ext.get::<mcp_core::PeerAddr>().map(|p| peer_ip(&p.0))
}

/// Like [`client_ip`], and also whether the address came from the request's only
/// extension. Then no other typed value (no `McpRequest`, no `ClientAddr`) is there, and
/// the caller can skip looking for it: `Extensions::len` costs far less than a lookup that
/// misses. The order of precedence does not matter then, since at most one of the three
/// address types is present; the common one (axum's `ConnectInfo`) is tried first.
#[inline]
pub(crate) fn client_ip_sole<B>(req: &Request<B>) -> (Option<IpAddr>, bool) {
    let ext = req.extensions();
    if ext.len() != 1 {
        return (client_ip(req), false);
    }
    if let Some(axum::extract::ConnectInfo(a)) =
        ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
    {
        return (Some(peer_ip(a)), true);
    }
    if let Some(a) = ext.get::<ClientAddr>() {
        return (Some(a.ip()), true);
    }
    match ext.get::<mcp_core::PeerAddr>() {
        Some(p) => (Some(peer_ip(&p.0)), true),
        None => (None, false),
    }
}

/// Appends one part to an encoded key: a tag letter, the byte length, `:`, the value.
/// The length prefix makes the encoding injective: no value can imitate another part.
/// Values longer than [`MAX_KEY_PART_LEN`] are replaced by `#` and their SHA-256 in hex.
pub(crate) fn encode_part(out: &mut String, tag: char, value: &str) {
    if value.len() > MAX_KEY_PART_LEN {
        let digest = Sha256::digest(value.as_bytes());
        let hex = hex::encode(digest);
        let _ = write!(out, "{tag}#{}:{hex}", hex.len());
    } else {
        let _ = write!(out, "{tag}{}:{value}", value.len());
    }
}

/// Builds the key of a request from the configured parts; `None` when a part is missing
/// (no principal, no header, no address, or a header value that is not visible ASCII).
#[inline]
pub(crate) fn extract<B>(parts: &[KeyPart], req: &Request<B>, ip: Option<IpAddr>) -> Option<Key> {
    // Fast paths: one part that needs no text.
    if let [single] = parts {
        match single {
            KeyPart::Ip => return ip.map(Key::Ip),
            KeyPart::Global => return Some(Key::Global),
            _ => {}
        }
    }
    let mut out = String::with_capacity(32);
    for part in parts {
        match part {
            KeyPart::Ip => {
                let ip = ip?;
                let _ = write!(out, "i:{ip};");
            }
            KeyPart::Global => out.push_str("g;"),
            KeyPart::Principal => {
                let p = req.extensions().get::<Principal>()?;
                encode_part(&mut out, 'p', p.qualified_id());
            }
            KeyPart::Credential => {
                let p = req.extensions().get::<Principal>()?;
                encode_part(&mut out, 'c', p.credential_id()?);
            }
            KeyPart::Header(name) => {
                let mut values = req.headers().get_all(name).iter();
                // Exactly one value: a repeated header is ambiguous.
                let (Some(v), None) = (values.next(), values.next()) else {
                    return None;
                };
                let s = header_key_value(v.as_bytes())?;
                encode_part(&mut out, 'h', s);
            }
        }
    }
    Some(Key::Text(Arc::from(out)))
}

/// A header value usable as a key part: trimmed, non-empty, visible ASCII and spaces only.
pub(crate) fn header_key_value(raw: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(raw).ok()?.trim();
    if s.is_empty() || !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return None;
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;
    use mcp_core::AuthMethod;
    use proptest::prelude::*;

    #[test]
    fn sole_extension_shortcut_keeps_precedence_and_sees_other_values() {
        use std::net::SocketAddr;
        let peer: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let via_proxy = ClientAddr::direct("198.51.100.7:1".parse().unwrap());
        // Only ConnectInfo: its address, and nothing else is there.
        let mut r = Request::new(());
        r.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        assert_eq!(client_ip_sole(&r), (Some(peer.ip()), true));
        // ClientAddr beside ConnectInfo still wins, and the shortcut is not taken.
        r.extensions_mut().insert(via_proxy);
        assert_eq!(client_ip_sole(&r), (Some(via_proxy.ip()), false));
        assert_eq!(client_ip_sole(&r).0, client_ip(&r));
        // Only a ClientAddr, or only a PeerAddr.
        let mut r = Request::new(());
        r.extensions_mut().insert(via_proxy);
        assert_eq!(client_ip_sole(&r), (Some(via_proxy.ip()), true));
        let mut r = Request::new(());
        r.extensions_mut().insert(mcp_core::PeerAddr(peer));
        assert_eq!(client_ip_sole(&r), (Some(peer.ip()), true));
        // A sole extension that is not an address (e.g. the parsed request): not "sole".
        let mut r = Request::new(());
        r.extensions_mut().insert(7u32);
        assert_eq!(client_ip_sole(&r), (None, false));
        // The address beside another value (the parsed request): not "sole".
        r.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        assert_eq!(client_ip_sole(&r), (Some(peer.ip()), false));
    }

    fn req() -> Request<()> {
        Request::new(())
    }

    #[test]
    fn ip_and_global_fast_paths() {
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(extract(&[KeyPart::Ip], &req(), Some(ip)), Some(Key::Ip(ip)));
        assert_eq!(extract(&[KeyPart::Ip], &req(), None), None);
        assert_eq!(extract(&[KeyPart::Global], &req(), None), Some(Key::Global));
    }

    #[test]
    fn principal_and_credential() {
        let mut r = req();
        assert_eq!(extract(&[KeyPart::Principal], &r, None), None);
        r.extensions_mut()
            .insert(Principal::new("alice", AuthMethod::ApiKey).with_credential_id("k1"));
        let a = extract(&[KeyPart::Principal], &r, None).unwrap();
        let c = extract(&[KeyPart::Credential], &r, None).unwrap();
        assert_ne!(a, c);
        let ip: IpAddr = "::1".parse().unwrap();
        let both = extract(&[KeyPart::Principal, KeyPart::Ip], &r, Some(ip)).unwrap();
        assert_eq!(both, Key::Text(Arc::from("p12:apikey:alicei:::1;")));
        // The certificate CN=alice is another client.
        let mut cert = req();
        cert.extensions_mut()
            .insert(Principal::new("alice", AuthMethod::ClientCertificate));
        assert_ne!(extract(&[KeyPart::Principal], &cert, None), Some(a));
    }

    #[test]
    fn repeated_or_binary_header_has_no_key() {
        let name = HeaderName::from_static("x-tenant");
        let mut r = req();
        r.headers_mut().append(&name, "a".parse().unwrap());
        assert!(extract(&[KeyPart::Header(name.clone())], &r, None).is_some());
        r.headers_mut().append(&name, "b".parse().unwrap());
        assert!(extract(&[KeyPart::Header(name.clone())], &r, None).is_none());
        let mut r = req();
        r.headers_mut()
            .insert(&name, http::HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        assert!(extract(&[KeyPart::Header(name)], &r, None).is_none());
    }

    #[test]
    fn a_key_is_24_bytes() {
        // Memory per key in BENCHMARKS.md assumes it.
        assert_eq!(std::mem::size_of::<Key>(), 24);
    }

    #[test]
    fn long_values_are_hashed() {
        let mut s = String::new();
        encode_part(&mut s, 'h', &"x".repeat(10_000));
        assert!(s.len() < 80, "{s}");
    }

    proptest! {
        // The encoding is injective: two different (principal, header) pairs never give
        // the same key, whatever separators they contain.
        #[test]
        fn encoding_is_injective(a in "[ -~]{0,80}", b in "[ -~]{0,80}", c in "[ -~]{0,80}", d in "[ -~]{0,80}") {
            let enc = |x: &str, y: &str| { let mut s = String::new(); encode_part(&mut s, 'p', x); encode_part(&mut s, 'h', y); s };
            if (a.as_str(), b.as_str()) != (c.as_str(), d.as_str()) {
                prop_assert_ne!(enc(&a, &b), enc(&c, &d));
            }
        }

        #[test]
        fn header_values_never_panic_and_stay_bounded(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Some(v) = header_key_value(&raw) {
                prop_assert!(!v.is_empty());
                let mut s = String::new();
                encode_part(&mut s, 'h', v);
                prop_assert!(s.len() <= MAX_KEY_PART_LEN + 8);
            }
        }

        #[test]
        fn key_extraction_never_panics(header in proptest::collection::vec(any::<u8>(), 0..200), id in ".{0,100}") {
            let name = HeaderName::from_static("x-k");
            let mut r = req();
            if let Ok(v) = http::HeaderValue::from_bytes(&header) { r.headers_mut().insert(&name, v); }
            r.extensions_mut().insert(Principal::new(id, AuthMethod::Jwt));
            let parts = [KeyPart::Header(name), KeyPart::Principal, KeyPart::Ip];
            let k = extract(&parts, &r, Some("10.0.0.1".parse().unwrap()));
            if let Some(Key::Text(t)) = k { prop_assert!(t.len() <= 3 * (MAX_KEY_PART_LEN + 8) + 40); }
        }
    }
}
