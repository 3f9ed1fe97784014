//! [`ClientAddr`]: the peer address and the client IP resolved through trusted proxies only.
//!
//! The peer address comes from the connection: [`PeerAddr`] (inserted by the suite's
//! accept loops) or axum's `ConnectInfo<SocketAddr>`. When, and only when, the peer is a
//! configured trusted proxy, `X-Forwarded-For` (or `Forwarded`, RFC 7239, or `X-Real-IP`,
//! as configured) is read right to left: each address that is itself a trusted proxy is
//! skipped, and the first one that is not is the client. A client that is not a trusted
//! proxy cannot change its address by sending these headers. An unparsable entry stops the
//! walk at the last address reached, which was sent by a trusted proxy.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, Request};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tower_layer::Layer;
use tower_service::Service;

/// At most this many forwarded hops are examined, from the right.
pub const MAX_FORWARDED_HOPS: usize = 64;

/// The TCP peer address of the connection, put in the request extensions by an accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// The peer address and the client IP of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr {
    peer: SocketAddr,
    ip: IpAddr,
    peer_trusted: bool,
}

impl ClientAddr {
    /// A client address for a direct connection (no proxy): the peer is not a trusted
    /// proxy.
    pub fn direct(peer: SocketAddr) -> Self {
        Self {
            peer,
            ip: peer.ip().to_canonical(),
            peer_trusted: false,
        }
    }

    /// Whether the TCP peer is one of the configured trusted proxies (whether or not it
    /// sent a forwarding header). What a trusted proxy sets on the request (a request id,
    /// say) may be believed only when this is true.
    pub fn peer_is_trusted_proxy(&self) -> bool {
        self.peer_trusted
    }

    /// The TCP peer (the last proxy, or the client itself).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The client IP: the peer's, or the one a trusted proxy reported.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// Whether the client IP came from a forwarding header of a trusted proxy.
    pub fn is_forwarded(&self) -> bool {
        self.ip != self.peer.ip().to_canonical()
    }
}

impl fmt::Display for ClientAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.ip)
    }
}

/// Which forwarding header a trusted proxy sets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
    /// `X-Real-IP: client` (one address, set by the proxy).
    XRealIp,
}

/// The proxies whose forwarding headers are believed. The default trusts none.
///
/// ```
/// use std::net::SocketAddr;
/// use http::HeaderMap;
/// use mcp_core::TrustedProxies;
///
/// let proxies = TrustedProxies::new(["10.0.0.0/8".parse().unwrap()]);
/// let mut headers = HeaderMap::new();
/// headers.insert("x-forwarded-for", "198.51.100.7, 10.0.0.2".parse().unwrap());
///
/// // From the trusted load balancer: the rightmost untrusted address is the client.
/// let lb: SocketAddr = "10.0.0.1:5000".parse().unwrap();
/// assert_eq!(proxies.resolve(lb, &headers).ip().to_string(), "198.51.100.7");
///
/// // From anyone else: the header is ignored.
/// let stranger: SocketAddr = "203.0.113.9:5000".parse().unwrap();
/// assert_eq!(proxies.resolve(stranger, &headers).ip().to_string(), "203.0.113.9");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedProxies {
    /// Networks of trusted proxies.
    #[serde(default)]
    pub networks: Vec<IpNet>,
    /// The header they set.
    #[serde(default)]
    pub header: ForwardedHeader,
}

impl TrustedProxies {
    /// Trust the given networks, reading `X-Forwarded-For`.
    pub fn new(networks: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            networks: networks.into_iter().collect(),
            header: ForwardedHeader::XForwardedFor,
        }
    }

    /// Trust no proxy: the client IP is always the peer's.
    pub fn none() -> Self {
        Self::default()
    }

    /// Reads this header instead of `X-Forwarded-For`.
    pub fn with_header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Whether `ip` is a trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|n| n.contains(&ip))
    }

    /// Resolves the client address of a request from `peer`.
    pub fn resolve(&self, peer: SocketAddr, headers: &HeaderMap) -> ClientAddr {
        let direct = ClientAddr::direct(peer);
        if self.networks.is_empty() || !self.is_trusted(direct.ip) {
            return direct;
        }
        let mut current = direct.ip;
        match self.header {
            ForwardedHeader::XRealIp => {
                // One value: believed only when it is the only one.
                let mut values = headers.get_all(X_REAL_IP).iter();
                if let (Some(v), None) = (values.next(), values.next())
                    && let Some(ip) = v.to_str().ok().and_then(parse_node)
                {
                    current = ip;
                }
            }
            ForwardedHeader::XForwardedFor => {
                let hops = list_entries(headers, X_FORWARDED_FOR);
                for hop in hops.iter().rev().take(MAX_FORWARDED_HOPS) {
                    match parse_node(hop) {
                        Some(ip) => {
                            current = ip;
                            if !self.is_trusted(ip) {
                                break;
                            }
                        }
                        None => break,
                    }
                }
            }
            ForwardedHeader::Forwarded => {
                let hops = list_entries(headers, http::header::FORWARDED);
                for element in hops.iter().rev().take(MAX_FORWARDED_HOPS) {
                    match forwarded_for(element).and_then(parse_node) {
                        Some(ip) => {
                            current = ip;
                            if !self.is_trusted(ip) {
                                break;
                            }
                        }
                        None => break,
                    }
                }
            }
        }
        ClientAddr {
            peer,
            ip: current,
            peer_trusted: true,
        }
    }
}

/// `X-Real-IP` (looked up by name, not parsed from a string on every request).
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// `X-Forwarded-For`.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Splits every instance of a list header on commas outside quoted strings, in order.
///
/// The left part of a value is the client's and the right part its proxies': nothing the
/// client wrote may change how the appended entries are split. So the split works on
/// bytes (a comma is one byte in any encoding; an entry that is not UTF-8 is an
/// unparsable hop, never the whole value), and a value whose quoted string does not end
/// is split again at every comma (an unterminated quote would take the entries appended
/// after it).
fn list_entries(headers: &HeaderMap, name: HeaderName) -> Vec<&str> {
    let mut out = Vec::new();
    for value in headers.get_all(name) {
        let bytes = value.as_bytes();
        let first = out.len();
        let mut start = 0;
        let mut in_quotes = false;
        let mut escaped = false;
        for (i, &b) in bytes.iter().enumerate() {
            if escaped {
                escaped = false;
                continue;
            }
            match b {
                b'\\' if in_quotes => escaped = true,
                b'"' => in_quotes = !in_quotes,
                b',' if !in_quotes => {
                    out.push(entry(&bytes[start..i]));
                    start = i + 1;
                }
                _ => {}
            }
        }
        if in_quotes {
            out.truncate(first);
            out.extend(bytes.split(|&b| b == b',').map(entry));
        } else {
            out.push(entry(&bytes[start..]));
        }
    }
    out
}

/// One list entry, trimmed; `"\0"` (never a node) when it is not UTF-8.
fn entry(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).map_or("\u{0}", str::trim)
}

/// The `for=` parameter of one RFC 7239 forwarded-element, unquoted.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if k.trim().eq_ignore_ascii_case("for") {
            let v = v.trim();
            Some(
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v),
            )
        } else {
            None
        }
    })
}

/// Parses a node: `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]`, `[::1]:80`. Obfuscated
/// identifiers (`_x`), `unknown` and anything else give `None`.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if s.len() > 64 {
        return None;
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.starts_with(':')) {
            return None;
        }
        return inner
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(|ip| IpAddr::V6(ip).to_canonical());
    }
    s.parse::<SocketAddr>()
        .ok()
        .map(|sa| sa.ip().to_canonical())
}

/// A layer that puts a [`ClientAddr`] in the request extensions, resolved from the
/// connection's [`PeerAddr`] (or axum's `ConnectInfo<SocketAddr>`) through
/// [`TrustedProxies`]. Without a peer address the request passes on without one, and
/// layers that need it fall back as they document.
#[derive(Debug, Clone, Default)]
pub struct ClientAddrLayer {
    proxies: Arc<TrustedProxies>,
}

impl ClientAddrLayer {
    /// A layer that trusts the given proxies.
    pub fn new(proxies: TrustedProxies) -> Self {
        Self {
            proxies: Arc::new(proxies),
        }
    }
}

impl<S> Layer<S> for ClientAddrLayer {
    type Service = ResolveClientAddr<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ResolveClientAddr {
            inner,
            proxies: self.proxies.clone(),
        }
    }
}

/// The service made by [`ClientAddrLayer`].
#[derive(Debug, Clone)]
pub struct ResolveClientAddr<S> {
    inner: S,
    proxies: Arc<TrustedProxies>,
}

/// The IPv6 prefix length [`ip_key`] groups IPv6 clients by, unless configured otherwise:
/// a /64 is the smallest block a network, host or VM is normally given (RFC 6177,
/// RFC 7421), and any holder of one can use all of its 2^64 addresses.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The address that identifies a client in per-address state (rate-limit buckets, failure
/// counts, connection caps), so that one holder of an IPv6 block cannot get a fresh entry
/// by moving to another address of its block:
///
/// - an IPv4 address as it is (one client per address);
/// - an IPv4-mapped IPv6 address (`::ffff:198.51.100.7`, as a dual-stack socket reports an
///   IPv4 peer) as that IPv4 address;
/// - any other IPv6 address cut to its first `ipv6_prefix` bits, the rest zero (a value
///   above 128 is taken as 128: one client per address).
///
/// The result is meant as a key, not as an address to connect to or to log as the
/// client's: allow and deny lists should still be matched against the address itself.
///
/// ```
/// use std::net::IpAddr;
/// use mcp_core::client_addr::{DEFAULT_IPV6_PREFIX, ip_key};
///
/// let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
/// let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
/// assert_eq!(ip_key(a, DEFAULT_IPV6_PREFIX), ip_key(b, DEFAULT_IPV6_PREFIX));
/// assert_eq!(ip_key(a, 64), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
/// assert_ne!(ip_key(a, 128), ip_key(b, 128));
/// let v4: IpAddr = "198.51.100.7".parse().unwrap();
/// assert_eq!(ip_key(v4, 64), v4);
/// assert_eq!(ip_key("::ffff:198.51.100.7".parse().unwrap(), 64), v4);
/// ```
#[inline]
pub fn ip_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let keep = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
            IpAddr::V6(std::net::Ipv6Addr::from_bits(v6.to_bits() & mask))
        }
    }
}

/// The peer address of a request, from [`PeerAddr`] or axum's `ConnectInfo`.
pub fn peer_addr<B>(req: &Request<B>) -> Option<SocketAddr> {
    if let Some(PeerAddr(a)) = req.extensions().get::<PeerAddr>() {
        return Some(*a);
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::ConnectInfo(a)) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(*a);
    }
    None
}

impl<S, B> Service<Request<B>> for ResolveClientAddr<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(peer) = peer_addr(&req) {
            let addr = self.proxies.resolve(peer, req.headers());
            req.extensions_mut().insert(addr);
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_keys_group_ipv6_by_prefix_and_keep_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // One /64: one key, whatever the interface identifier.
        for a in [
            "2001:db8:0:1::1",
            "2001:db8:0:1:ffff:ffff:ffff:ffff",
            "2001:db8:0:1:1234::",
        ] {
            assert_eq!(ip_key(ip(a), 64), ip("2001:db8:0:1::"));
        }
        // The next /64 is another client.
        assert_ne!(
            ip_key(ip("2001:db8:0:2::1"), 64),
            ip_key(ip("2001:db8:0:1::1"), 64)
        );
        // Other lengths; above 128 is 128; 0 is one key for every IPv6 client.
        assert_eq!(
            ip_key(ip("2001:db8:abcd:1234::1"), 48),
            ip("2001:db8:abcd::")
        );
        assert_eq!(ip_key(ip("2001:db8::1"), 128), ip("2001:db8::1"));
        assert_eq!(ip_key(ip("2001:db8::1"), 200), ip("2001:db8::1"));
        assert_eq!(ip_key(ip("2001:db8::1"), 0), ip("::"));
        assert_eq!(ip_key(ip("2001:db8::1"), 1), ip("::"));
        assert_eq!(ip_key(ip("ffff::1"), 1), ip("8000::"));
        // IPv4, and IPv4 mapped into IPv6, per address.
        assert_eq!(ip_key(ip("198.51.100.7"), 64), ip("198.51.100.7"));
        assert_eq!(ip_key(ip("::ffff:198.51.100.7"), 64), ip("198.51.100.7"));
        assert_ne!(
            ip_key(ip("::ffff:198.51.100.7"), 64),
            ip_key(ip("::ffff:198.51.100.8"), 64)
        );
        // Loopback ::1 keeps its own key at 128, and shares ::/64 otherwise.
        assert_eq!(ip_key(ip("::1"), 64), ip("::"));
    }

    proptest::proptest! {
        /// Two addresses of one /64 share a key; addresses of different /64s never do;
        /// IPv4 (plain or mapped) is unchanged.
        #[test]
        fn ip_key_is_the_prefix(net in proptest::prelude::any::<u64>(), a in proptest::prelude::any::<u64>(), b in proptest::prelude::any::<u64>(), other in proptest::prelude::any::<u64>(), v4 in proptest::prelude::any::<u32>()) {
            let v6 = |hi: u64, lo: u64| IpAddr::V6(std::net::Ipv6Addr::from_bits((u128::from(hi) << 64) | u128::from(lo)));
            // Leave out the ::ffff:0:0/96 block, which is IPv4.
            proptest::prop_assume!(net != 0);
            proptest::prop_assert_eq!(ip_key(v6(net, a), 64), ip_key(v6(net, b), 64));
            proptest::prop_assert_eq!(ip_key(v6(net, a), 64), v6(net, 0));
            if other != net {
                proptest::prop_assert_ne!(ip_key(v6(net, a), 64), ip_key(v6(other, b), 64));
            }
            proptest::prop_assert_eq!(ip_key(v6(net, a), 128), v6(net, a));
            let four = std::net::Ipv4Addr::from_bits(v4);
            proptest::prop_assert_eq!(ip_key(IpAddr::V4(four), 64), IpAddr::V4(four));
            proptest::prop_assert_eq!(ip_key(IpAddr::V6(four.to_ipv6_mapped()), 64), IpAddr::V4(four));
        }
    }

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn proxies() -> TrustedProxies {
        TrustedProxies::new(["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()])
    }

    #[test]
    fn untrusted_peer_cannot_spoof() {
        let p = proxies();
        for hdr in [
            ("x-forwarded-for", "1.1.1.1"),
            ("forwarded", "for=1.1.1.1"),
            ("x-real-ip", "1.1.1.1"),
        ] {
            let a = p.resolve(sa("203.0.113.5:1"), &h(&[hdr]));
            assert_eq!(a.ip(), "203.0.113.5".parse::<IpAddr>().unwrap());
            assert!(!a.is_forwarded());
            assert!(!a.peer_is_trusted_proxy());
        }
    }

    #[test]
    fn whether_the_peer_is_a_trusted_proxy() {
        let p = proxies();
        // A trusted peer, with or without a forwarding header, IPv4-mapped too.
        assert!(p.resolve(sa("10.0.0.1:1"), &h(&[])).peer_is_trusted_proxy());
        assert!(
            p.resolve(sa("10.0.0.1:1"), &h(&[("x-forwarded-for", "1.1.1.1")]))
                .peer_is_trusted_proxy()
        );
        assert!(
            p.resolve(sa("[::ffff:10.0.0.1]:1"), &h(&[]))
                .peer_is_trusted_proxy()
        );
        assert!(!p.resolve(sa("11.0.0.1:1"), &h(&[])).peer_is_trusted_proxy());
        assert!(
            !TrustedProxies::none()
                .resolve(sa("10.0.0.1:1"), &h(&[]))
                .peer_is_trusted_proxy()
        );
        assert!(!ClientAddr::direct(sa("10.0.0.1:1")).peer_is_trusted_proxy());
    }

    #[test]
    fn no_trusted_proxies_means_peer() {
        let a =
            TrustedProxies::none().resolve(sa("10.0.0.1:1"), &h(&[("x-forwarded-for", "1.1.1.1")]));
        assert_eq!(a.ip().to_string(), "10.0.0.1");
    }

    #[test]
    fn rightmost_untrusted_wins() {
        let p = proxies();
        // The client forged "6.6.6.6" at the left; the trusted proxy appended the real one.
        let a = p.resolve(
            sa("10.0.0.1:1"),
            &h(&[("x-forwarded-for", "6.6.6.6, 198.51.100.1, 10.1.1.1")]),
        );
        assert_eq!(a.ip().to_string(), "198.51.100.1");
        assert!(a.is_forwarded());
        // Several header lines are one list.
        let a = p.resolve(
            sa("10.0.0.1:1"),
            &h(&[
                ("x-forwarded-for", "6.6.6.6"),
                ("x-forwarded-for", "198.51.100.2"),
            ]),
        );
        assert_eq!(a.ip().to_string(), "198.51.100.2");
    }

    #[test]
    fn all_trusted_gives_leftmost() {
        let a = proxies().resolve(
            sa("10.0.0.1:1"),
            &h(&[("x-forwarded-for", "10.2.2.2, 10.3.3.3")]),
        );
        assert_eq!(a.ip().to_string(), "10.2.2.2");
    }

    #[test]
    fn garbage_stops_the_walk() {
        let a = proxies().resolve(
            sa("10.0.0.1:1"),
            &h(&[("x-forwarded-for", "1.2.3.4, garbage, 10.5.5.5")]),
        );
        assert_eq!(a.ip().to_string(), "10.5.5.5");
        let a = proxies().resolve(sa("10.0.0.1:1"), &h(&[("x-forwarded-for", "")]));
        assert_eq!(a.ip().to_string(), "10.0.0.1");
    }

    #[test]
    fn forwarded_rfc7239() {
        let p = proxies().with_header(ForwardedHeader::Forwarded);
        let a = p.resolve(
            sa("10.0.0.1:1"),
            &h(&[(
                "forwarded",
                r#"for=6.6.6.6, For="[2001:db8:cafe::17]:4711";proto=https, for=10.9.9.9;by=10.0.0.1"#,
            )]),
        );
        assert_eq!(a.ip().to_string(), "2001:db8:cafe::17");
        let a = p.resolve(sa("10.0.0.1:1"), &h(&[("forwarded", "for=unknown")]));
        assert_eq!(a.ip().to_string(), "10.0.0.1");
        let a = p.resolve(
            sa("10.0.0.1:1"),
            &h(&[("forwarded", "for=_hidden, for=192.0.2.43")]),
        );
        assert_eq!(a.ip().to_string(), "192.0.2.43");
        // Commas inside quotes do not split elements.
        let a = p.resolve(
            sa("10.0.0.1:1"),
            &h(&[("forwarded", r#"for="1.1.1.1,2.2.2.2""#)]),
        );
        assert_eq!(a.ip().to_string(), "10.0.0.1");
    }

    #[test]
    fn ipv6_and_mapped_addresses() {
        let p = proxies();
        let a = p.resolve(
            sa("[fd00::1]:1"),
            &h(&[("x-forwarded-for", "[2001:db8::1]:443")]),
        );
        assert_eq!(a.ip().to_string(), "2001:db8::1");
        // An IPv4-mapped IPv6 peer in a trusted IPv4 network is trusted.
        let a = p.resolve(
            sa("[::ffff:10.0.0.1]:1"),
            &h(&[("x-forwarded-for", "::ffff:198.51.100.3")]),
        );
        assert_eq!(a.ip().to_string(), "198.51.100.3");
    }

    #[test]
    fn x_real_ip_single_value_only() {
        let p = proxies().with_header(ForwardedHeader::XRealIp);
        let a = p.resolve(sa("10.0.0.1:1"), &h(&[("x-real-ip", "198.51.100.4")]));
        assert_eq!(a.ip().to_string(), "198.51.100.4");
        let a = p.resolve(
            sa("10.0.0.1:1"),
            &h(&[("x-real-ip", "198.51.100.4"), ("x-real-ip", "6.6.6.6")]),
        );
        assert_eq!(a.ip().to_string(), "10.0.0.1");
    }

    #[test]
    fn hop_count_is_bounded() {
        let long = std::iter::repeat_n("10.1.1.1", 1000)
            .collect::<Vec<_>>()
            .join(", ");
        let a = proxies().resolve(
            sa("10.0.0.1:1"),
            &h(&[("x-forwarded-for", &format!("1.1.1.1, {long}"))]),
        );
        // The forged leftmost address is never reached.
        assert_eq!(a.ip().to_string(), "10.1.1.1");
    }

    /// What a client writes in front of the address its proxy appends cannot swallow that
    /// address: an unterminated quote (which would take the appended `, addr` into a
    /// quoted string) or a non-ASCII byte (which made the whole value unreadable) left the
    /// proxy's own address as the client's. Found while writing the property of the
    /// `client_addr` fuzz target (fuzz/), which checks the same for any client text.
    #[test]
    fn client_text_cannot_swallow_the_appended_address() {
        let peer = sa("10.0.0.1:1");
        let real = "198.51.100.7";
        for (header, client, appended) in [
            ("x-forwarded-for", &b"x\""[..], real.to_owned()),
            ("x-forwarded-for", &b"\""[..], real.to_owned()),
            ("x-forwarded-for", &b"1.2.3.4, \"a\\"[..], real.to_owned()),
            ("x-forwarded-for", &b"caf\xc3\xa9"[..], real.to_owned()),
            ("x-forwarded-for", &b"\xff, 6.6.6.6"[..], real.to_owned()),
            ("forwarded", &b"for=\"x"[..], format!("for={real}")),
            ("forwarded", &b"for=\"_x\\\""[..], format!("for={real}")),
            ("forwarded", &b"for=\xe9"[..], format!("for={real}")),
        ] {
            let p = if header == "forwarded" {
                proxies().with_header(ForwardedHeader::Forwarded)
            } else {
                proxies()
            };
            let mut value = client.to_vec();
            value.extend_from_slice(b", ");
            value.extend_from_slice(appended.as_bytes());
            let mut m = HeaderMap::new();
            m.append(
                http::HeaderName::from_static(header),
                http::HeaderValue::from_bytes(&value).unwrap(),
            );
            let got = p.resolve(peer, &m);
            assert_eq!(
                got.ip().to_string(),
                real,
                "{header}: {}",
                String::from_utf8_lossy(&value)
            );
        }
    }
}
