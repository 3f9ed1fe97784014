//! URL rules: allowed schemes, maximum length, and SSRF address rules.
//!
//! A URL is parsed with the [`url`] crate (the WHATWG URL standard browsers and most HTTP
//! clients follow), then its host is classified here. For the special schemes (`http`,
//! `https`, `ws`, `wss`, `ftp`) the URL parser already turns every IPv4 spelling into the
//! address (`http://2130706433/`, `http://0177.0.0.1/`, `http://0x7f.1/`, `http://127.1/`
//! all become `127.0.0.1`); for other schemes the host stays a name, so this module parses
//! it again with the same lenient rules ([`parse_ipv4_lenient`]). IPv6 addresses that carry
//! an IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d`, NAT64
//! `64:ff9b::/96`, 6to4 `2002::/16`) are classified by the IPv4 address they carry.
//!
//! In text values ([`UrlPolicy::check_value`]), URL candidates are found the way clients
//! read them ([`find_urls`]: `scheme:` with or without slashes, backslashes, tabs and
//! newlines) and each is judged by every reading a mainstream client may take (WHATWG,
//! and RFC 3986 as urllib3, Python's `urlsplit` and Go's net/url read it): any reading
//! that reaches a forbidden host or a scheme outside the allow-list refuses the value.
//! Also read: network-path references a client joins to its base URL (`//host/`,
//! `/\host/`, `\\host/`, `\/host/`; refused only for a forbidden host), curl globs
//! (`{a,b}`, `[1-9]`; each expansion, at most [`MAX_GLOB_EXPANSIONS`]), the decoded views
//! of the value (`\u` escapes, percent-encoding, HTML references, NFKC through
//! [`crate::text::normalize_for_rules`]), leading-zero IPv4 parts read both as octal and
//! as decimal ([`parse_ipv4_decimal_zeros`]), and `scheme:` without slashes for the
//! schemes a client dereferences (`data:`, `unix:`, `git:`, `ms-*:`...; not the naming
//! schemes `mailto:`, `tel:`, `urn:`, `about:`).
//!
//! **Limitation (DNS):** no name is resolved on the request path. A name that resolves to
//! a private address (`127.0.0.1.nip.io`, an attacker's domain, or one that changes
//! answer between check and use: DNS rebinding) passes these rules. The component that
//! fetches the URL must check the address it actually connects to: [`UrlPolicy::check_ip`]
//! is the same rule for that purpose (call it from the HTTP client's resolver or connector).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use url::{Host, Url};

use crate::config::ConfigError;

/// The class of a non-public address, as refused by the SSRF rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressClass {
    /// `127.0.0.0/8`, `::1`, `localhost` and `*.localhost`.
    Loopback,
    /// `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`, site-local `fec0::/10`, and names
    /// that only resolve inside a private network: `*.internal`, `*.local`, `*.home.arpa`,
    /// `*.svc` and `*.cluster.local` (Kubernetes services), `kubernetes`,
    /// `kubernetes.default`, `host.docker.internal`, `gateway.docker.internal`,
    /// `host.containers.internal`.
    Private,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// Carrier-grade NAT, `100.64.0.0/10`.
    SharedAddressSpace,
    /// Unique local IPv6, `fc00::/7`.
    UniqueLocal,
    /// Cloud metadata services: `169.254.169.254`, `169.254.169.123`, `169.254.170.2`,
    /// `fd00:ec2::254`, `100.100.100.200`, `192.0.0.192`, `168.63.129.16` (Azure's
    /// WireServer), and the names `metadata.google.internal`, `metadata.goog`,
    /// `metadata`, `instance-data` (and `.ec2.internal`), `metadata.azure.internal`,
    /// `metadata.azure.com`, `metadata.packet.net`. Refused unless
    /// this class itself is allowed or the address or name is listed in `allowed_hosts`:
    /// an allowed enclosing class (link-local) or an allowed network does not unlock it.
    Metadata,
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// Other special-purpose ranges: `192.0.0.0/24`, documentation, benchmarking,
    /// `240.0.0.0/4`, 6to4 relay, Teredo, discard, IPv4-compatible IPv6, local NAT64.
    Reserved,
}

impl AddressClass {
    /// The snake_case name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link_local",
            Self::SharedAddressSpace => "shared_address_space",
            Self::UniqueLocal => "unique_local",
            Self::Metadata => "metadata",
            Self::Unspecified => "unspecified",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Reserved => "reserved",
        }
    }
}

const METADATA_V4: [Ipv4Addr; 6] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(168, 63, 129, 16),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(192, 0, 0, 192),
    Ipv4Addr::new(169, 254, 169, 123),
];
const METADATA_V6: [Ipv6Addr; 1] = [Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254)];
const METADATA_NAMES: [&str; 8] = [
    "metadata.google.internal",
    "metadata.azure.com",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.azure.internal",
    "metadata.packet.net",
];
/// Names of the private network a container or a Kubernetes pod sees.
const PRIVATE_NAMES: [&str; 5] = [
    "kubernetes",
    "kubernetes.default",
    "host.docker.internal",
    "gateway.docker.internal",
    "host.containers.internal",
];
/// Suffixes of names that resolve only inside a private network (RFC 6762 `.local`,
/// RFC 8375 `.home.arpa`, ICANN's private-use `.internal`, Kubernetes' service domains).
const PRIVATE_SUFFIXES: [&str; 5] = [
    ".internal",
    ".local",
    ".home.arpa",
    ".svc",
    ".cluster.local",
];
const LOOPBACK_NAMES: [&str; 5] = [
    "localhost",
    "localhost.localdomain",
    "ip6-localhost",
    "ip6-loopback",
    "loopback",
];

/// Classifies an IPv4 address: `None` for a public address.
pub fn classify_ipv4(ip: Ipv4Addr) -> Option<AddressClass> {
    use AddressClass::*;
    if METADATA_V4.contains(&ip) {
        return Some(Metadata);
    }
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, ..) => Unspecified,
        (10, ..) => Private,
        (100, 64..=127, _) => SharedAddressSpace,
        (127, ..) => Loopback,
        (169, 254, _) => LinkLocal,
        (172, 16..=31, _) => Private,
        (192, 0, 0) | (192, 0, 2) | (192, 88, 99) => Reserved,
        (192, 168, _) => Private,
        (198, 18..=19, _) | (198, 51, 100) | (203, 0, 113) => Reserved,
        (224..=239, ..) => Multicast,
        (255, 255, 255) if ip == Ipv4Addr::BROADCAST => Broadcast,
        (240..=255, ..) => Reserved,
        _ => return None,
    })
}

/// The IPv4 address an IPv6 address carries, when it is IPv4-mapped, IPv4-compatible,
/// NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`).
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        // IPv4-compatible (deprecated), but not :: and ::1.
        [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// Classifies an IPv6 address (and the IPv4 address it carries): `None` for public.
pub fn classify_ipv6(ip: Ipv6Addr) -> Option<AddressClass> {
    use AddressClass::*;
    if METADATA_V6.contains(&ip) {
        return Some(Metadata);
    }
    if let Some(v4) = embedded_ipv4(ip) {
        if let Some(class) = classify_ipv4(v4) {
            return Some(class);
        }
        // A public IPv4 address behind the deprecated IPv4-compatible form is still odd.
        if ip.segments()[..6] == [0; 6] {
            return Some(Reserved);
        }
        return None;
    }
    let s = ip.segments();
    Some(match s[0] {
        _ if ip.is_unspecified() => Unspecified,
        _ if ip.is_loopback() => Loopback,
        0xfe80..=0xfebf => LinkLocal,
        0xfec0..=0xfeff => Private,
        0xfc00..=0xfdff => UniqueLocal,
        0xff00..=0xffff => Multicast,
        // Documentation 2001:db8::/32, Teredo 2001::/32, ORCHIDv2 2001:20::/28,
        // benchmarking 2001:2::/48, local NAT64 64:ff9b:1::/48, discard 100::/64.
        0x2001 if s[1] == 0x0db8 || s[1] == 0 || (0x20..=0x2f).contains(&s[1]) => Reserved,
        0x2001 if s[1] == 2 && s[2] == 0 => Reserved,
        0x0064 if s[1] == 0xff9b && s[2] == 1 => Reserved,
        0x0100 if s[1..4] == [0, 0, 0] => Reserved,
        // Anything else outside global unicast 2000::/3.
        0x0000..=0x1fff | 0x4000..=0xfbff => Reserved,
        _ => return None,
    })
}

/// Classifies an address: `None` for public.
pub fn classify_ip(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(v4) => classify_ipv4(v4),
        IpAddr::V6(v6) => classify_ipv6(v6),
    }
}

fn parse_ipv4_part(part: &str) -> Option<u64> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) =
        if let Some(h) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (h, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() {
        // "0x" alone is zero, as in the URL standard.
        return Some(0);
    }
    if digits.len() > 32 {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Parses an IPv4 address the way `inet_aton` and the URL standard do: one to four parts
/// separated by dots (a trailing dot allowed), each decimal, octal (leading `0`) or hex
/// (`0x`), the last part filling the remaining bytes. `"2130706433"`, `"0177.0.0.1"`,
/// `"0x7f.0.0.1"` and `"127.1"` are all `127.0.0.1`.
///
/// ```
/// use mcp_sanitize::ssrf::parse_ipv4_lenient;
/// use std::net::Ipv4Addr;
/// for s in ["2130706433", "0177.0.0.1", "0x7f.0.0.1", "127.1", "0x7f000001", "127.0.0.1."] {
///     assert_eq!(parse_ipv4_lenient(s), Some(Ipv4Addr::new(127, 0, 0, 1)), "{s}");
/// }
/// assert_eq!(parse_ipv4_lenient("example.com"), None);
/// ```
pub fn parse_ipv4_lenient(s: &str) -> Option<Ipv4Addr> {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    let mut nums = [0u64; 4];
    let mut count = 0;
    for p in s.split('.') {
        if count == 4 {
            return None;
        }
        nums[count] = parse_ipv4_part(p)?;
        count += 1;
    }
    combine_ipv4(&nums[..count])
}

/// The address of one to four parsed parts in the `inet_aton` forms (the last part fills
/// the remaining bytes), or `None` when a part is out of range.
fn combine_ipv4(nums: &[u64]) -> Option<Ipv4Addr> {
    let (last, init) = nums.split_last()?;
    if init.iter().any(|&n| n > 255) {
        return None;
    }
    let rest_bits = 8 * (4 - init.len() as u32);
    if *last >= (1u64 << rest_bits) {
        return None;
    }
    let mut addr: u64 = 0;
    for (i, &n) in init.iter().enumerate() {
        addr |= n << (24 - 8 * i as u32);
    }
    addr |= last;
    Some(Ipv4Addr::from(u32::try_from(addr).ok()?))
}

/// The decimal reading of an IPv4 address whose parts have leading zeros, as Go before
/// 1.17, older Java and some `inet_pton` read it (`010.0.0.1` is `10.0.0.1` there, while
/// the URL standard, glibc and curl read `8.0.0.1`): one to four parts of decimal digits
/// separated by dots (a trailing dot allowed). `None` unless some part has a leading zero
/// (without one both readings agree).
///
/// ```
/// use mcp_sanitize::ssrf::parse_ipv4_decimal_zeros;
/// use std::net::Ipv4Addr;
/// assert_eq!(parse_ipv4_decimal_zeros("0127.0.0.1"), Some(Ipv4Addr::new(127, 0, 0, 1)));
/// assert_eq!(parse_ipv4_decimal_zeros("0172.016.0.1"), Some(Ipv4Addr::new(172, 16, 0, 1)));
/// assert_eq!(parse_ipv4_decimal_zeros("010.1"), Some(Ipv4Addr::new(10, 0, 0, 1)));
/// assert_eq!(parse_ipv4_decimal_zeros("127.0.0.1"), None);
/// assert_eq!(parse_ipv4_decimal_zeros("0x7f.0.0.1"), None);
/// ```
pub fn parse_ipv4_decimal_zeros(s: &str) -> Option<Ipv4Addr> {
    let s = s.strip_suffix('.').unwrap_or(s);
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        return None;
    }
    let mut nums = [0u64; 4];
    let mut count = 0;
    let mut zeros = false;
    for p in s.split('.') {
        if count == 4 || p.is_empty() {
            return None;
        }
        zeros |= p.len() > 1 && p.starts_with('0');
        let digits = p.trim_start_matches('0');
        if digits.len() > 10 {
            return None;
        }
        nums[count] = if digits.is_empty() {
            0
        } else {
            digits.parse().ok()?
        };
        count += 1;
    }
    if !zeros {
        return None;
    }
    combine_ipv4(&nums[..count])
}

/// The name rules of [`classify_host_name`] (metadata and loopback names), for a name
/// without trailing dots that is known not to be an address.
fn classify_domain_name(h: &str) -> Option<AddressClass> {
    let is = |list: &[&str]| list.iter().any(|n| n.eq_ignore_ascii_case(h));
    if is(&METADATA_NAMES) {
        return Some(AddressClass::Metadata);
    }
    let has_suffix = |suffix: &str| {
        h.len() > suffix.len()
            && h.is_char_boundary(h.len() - suffix.len())
            && h[h.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    if is(&LOOPBACK_NAMES) || has_suffix(".localhost") {
        return Some(AddressClass::Loopback);
    }
    if is(&PRIVATE_NAMES) || PRIVATE_SUFFIXES.iter().any(|s| has_suffix(s)) {
        return Some(AddressClass::Private);
    }
    None
}

/// Classifies a host name (lowercased, trailing dots ignored): the loopback and metadata
/// names, and names that are IPv4 addresses in a lenient form. `None` for other names.
pub fn classify_host_name(name: &str) -> Option<AddressClass> {
    let h = name.trim_end_matches('.');
    if let Some(class) = classify_domain_name(h) {
        return Some(class);
    }
    if let Some(ip) = parse_ipv4_lenient(h) {
        return classify_ipv4(ip);
    }
    let bracketed = h.strip_prefix('[').and_then(|s| s.strip_suffix(']'));
    if let Some(v6) = bracketed.and_then(|s| s.parse::<Ipv6Addr>().ok()) {
        return classify_ipv6(v6);
    }
    None
}

/// SSRF rules: which address classes, hosts and networks are allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SsrfConfig {
    /// Whether the SSRF rules apply (default true).
    pub enabled: bool,
    /// Address classes that are allowed (default none).
    pub allow: Vec<AddressClass>,
    /// Host names or addresses allowed whatever their class (exact, case-insensitive).
    pub allowed_hosts: Vec<String>,
    /// Networks allowed whatever their class (e.g. `10.1.2.0/24` for an internal API),
    /// except cloud metadata addresses, which only the `metadata` class or
    /// `allowed_hosts` unlock.
    pub allowed_networks: Vec<IpNet>,
    /// Opt-in resolution of host names (default off).
    pub resolve: ResolveConfig,
}

impl Default for SsrfConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            allow: Vec::new(),
            allowed_hosts: Vec::new(),
            allowed_networks: Vec::new(),
            resolve: ResolveConfig::default(),
        }
    }
}

/// Opt-in resolution of the host names of URL candidates, each address then checked as
/// a literal one ([`UrlPolicy::check_ip`]). Off by default: it blocks the validating
/// thread up to `timeout_ms` per name, and it is no defence against DNS rebinding (the
/// fetcher resolves again later and may get another answer); the fetcher's own check of
/// the address it connects to remains the real defence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResolveConfig {
    /// Resolve names and refuse one with a forbidden address (default false).
    pub enabled: bool,
    /// Longest wait for one name in milliseconds, 1 to 30000 (default 1000); a name not
    /// resolved in time is refused (`url_invalid`). A name that does not exist passes.
    pub timeout_ms: u64,
    /// Most names resolved for one value, 1 to 64 (default 4); a value with more is
    /// refused (`url_invalid`).
    pub max_names: usize,
}

impl Default for ResolveConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            timeout_ms: 1000,
            max_names: 4,
        }
    }
}

/// Why a URL was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlViolation {
    /// The scheme is not allowed.
    Scheme,
    /// The URL is longer than allowed.
    TooLong,
    /// The URL cannot be parsed, or has no host.
    Invalid,
    /// The host is a non-public address or name.
    Ssrf(AddressClass),
}

impl UrlViolation {
    /// The rule name: `url_scheme`, `url_length`, `url_invalid` or `ssrf`.
    pub const fn rule(self) -> &'static str {
        match self {
            Self::Scheme => "url_scheme",
            Self::TooLong => "url_length",
            Self::Invalid => "url_invalid",
            Self::Ssrf(_) => "ssrf",
        }
    }
}

/// The default maximum URL length.
pub const DEFAULT_MAX_URL_LENGTH: usize = 2048;

/// Compiled URL rules.
///
/// ```
/// use mcp_sanitize::ssrf::{SsrfConfig, UrlPolicy, UrlViolation, AddressClass};
///
/// let policy = UrlPolicy::new(&["http".into(), "https".into()], 2048, &SsrfConfig::default()).unwrap();
/// assert!(policy.check("https://example.com/x").is_ok());
/// assert_eq!(policy.check("http://169.254.169.254/latest"), Err(UrlViolation::Ssrf(AddressClass::Metadata)));
/// assert_eq!(policy.check("http://2130706433/"), Err(UrlViolation::Ssrf(AddressClass::Loopback)));
/// assert_eq!(policy.check("file:///etc/passwd"), Err(UrlViolation::Scheme));
/// ```
#[derive(Debug, Clone)]
pub struct UrlPolicy {
    schemes: Vec<String>,
    /// Whether each of [`SPECIAL_SCHEMES`] is allowed (for the plain-domain fast path).
    special_allowed: [bool; 5],
    max_len: usize,
    ssrf: bool,
    allow: Vec<AddressClass>,
    allowed_hosts: Vec<String>,
    allowed_networks: Vec<IpNet>,
    /// Resolution of names: (timeout, most names per value), when enabled.
    resolve: Option<(Duration, usize)>,
}

/// The special schemes of the URL standard the plain-domain fast path reads (`file` is
/// special too, but has no host rules of this kind).
const SPECIAL_SCHEMES: [&str; 5] = ["ws", "wss", "ftp", "http", "https"];

/// Per byte of a URL authority, for the plain-domain fast path.
const AUTH_HOST: u8 = 1;
const AUTH_DOT: u8 = 2;
const AUTH_COLON: u8 = 3;
const AUTH_END: u8 = 4;
static AUTHORITY: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = if c.is_ascii_alphanumeric() || c == b'-' {
            AUTH_HOST
        } else if c == b'.' {
            AUTH_DOT
        } else if c == b':' {
            AUTH_COLON
        } else if c == b'/' || c == b'?' || c == b'#' {
            AUTH_END
        } else {
            0
        };
        i += 1;
    }
    t
};

impl UrlPolicy {
    /// Builds the policy. Schemes are lowercase ASCII (`[a-z][a-z0-9+.-]*`), the maximum
    /// length at least 16.
    pub fn new(schemes: &[String], max_len: usize, ssrf: &SsrfConfig) -> Result<Self, ConfigError> {
        let mut out = Vec::new();
        for (i, s) in schemes.iter().enumerate() {
            let lower = s.trim_end_matches(':').to_ascii_lowercase();
            let ok = lower.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && lower
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+.-".contains(c));
            if !ok {
                return Err(ConfigError::invalid(
                    format!("allowed_protocols[{i}]"),
                    "must be a URL scheme such as `https`",
                ));
            }
            out.push(lower);
        }
        if max_len < 16 {
            return Err(ConfigError::invalid(
                "max_url_length",
                "must be at least 16",
            ));
        }
        let mut hosts = Vec::new();
        for (i, h) in ssrf.allowed_hosts.iter().enumerate() {
            if h.is_empty() || h.chars().any(|c| c.is_whitespace() || c == '/') {
                return Err(ConfigError::invalid(
                    format!("ssrf.allowed_hosts[{i}]"),
                    "must be a host name or address without scheme or path",
                ));
            }
            hosts.push(h.trim_end_matches('.').to_ascii_lowercase());
        }
        let r = &ssrf.resolve;
        if !(1..=30_000).contains(&r.timeout_ms) {
            return Err(ConfigError::invalid(
                "ssrf.resolve.timeout_ms",
                "must be 1 to 30000",
            ));
        }
        if !(1..=64).contains(&r.max_names) {
            return Err(ConfigError::invalid(
                "ssrf.resolve.max_names",
                "must be 1 to 64",
            ));
        }
        let resolve = r
            .enabled
            .then(|| (Duration::from_millis(r.timeout_ms), r.max_names));
        if resolve.is_some() {
            tracing::info!(
                timeout_ms = r.timeout_ms,
                max_names = r.max_names,
                "ssrf: host names of URLs in arguments are resolved on the request path"
            );
        }
        let special_allowed = SPECIAL_SCHEMES.map(|sp| out.iter().any(|s| s == sp));
        Ok(Self {
            schemes: out,
            special_allowed,
            max_len,
            ssrf: ssrf.enabled,
            allow: ssrf.allow.clone(),
            allowed_hosts: hosts,
            allowed_networks: ssrf.allowed_networks.clone(),
            resolve,
        })
    }

    /// Whether `scheme` (lowercase) is allowed.
    pub fn scheme_allowed(&self, scheme: &str) -> bool {
        self.schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme))
    }

    /// Checks one URL: length, scheme, then the host as a WHATWG parser and as RFC 3986
    /// readers read it (for URLs inside a text value, use [`Self::check_value`]).
    pub fn check(&self, raw: &str) -> Result<(), UrlViolation> {
        if raw.len() > self.max_len {
            return Err(UrlViolation::TooLong);
        }
        if let Some(result) = self.check_plain_domain(raw) {
            return result;
        }
        let url = Url::parse(raw).map_err(|_| UrlViolation::Invalid)?;
        if !self.scheme_allowed(url.scheme()) {
            return Err(UrlViolation::Scheme);
        }
        self.check_parsed_host(&url)?;
        self.check_rfc_hosts(raw)
    }

    /// The hosts RFC 3986 readers take from `raw` (see [`UrlPolicy::check_value`]).
    fn check_rfc_hosts(&self, raw: &str) -> Result<(), UrlViolation> {
        let Some(colon) = raw.find(':') else {
            return Ok(());
        };
        for_each_rfc_host(raw.get(colon + 1..).unwrap_or_default(), |h| {
            self.check_host_str(h)
        })
    }

    /// The common case without a full parse: a special scheme and an authority made only
    /// of ASCII letters, digits, `.`, `-` and a port, whose last label is not a number
    /// (so the URL standard reads it as a domain, never as an IPv4 address). `None` when
    /// the URL needs the full parser.
    fn check_plain_domain(&self, raw: &str) -> Option<Result<(), UrlViolation>> {
        let b = raw.as_bytes();
        // The first `:` must start `://` (a scheme never holds a `:`).
        let sep = b.iter().position(|&c| c == b':')?;
        if b.get(sep + 1..sep + 3) != Some(b"//") {
            return None;
        }
        let scheme = raw.get(..sep)?;
        let special = match scheme.len() {
            2 => 0,
            3 if scheme.eq_ignore_ascii_case("wss") => 1,
            3 => 2,
            4 => 3,
            5 => 4,
            _ => return None,
        };
        if !SPECIAL_SCHEMES[special].eq_ignore_ascii_case(scheme) {
            return None;
        }
        // One pass over the authority (up to `/`, `?` or `#`): only ASCII letters, digits,
        // `.`, `-` and one `:`; where the port starts; whether the host has `..`.
        let rest = b.get(sep + 3..)?;
        let mut host_end = None;
        let mut end = rest.len();
        let mut dotdot = false;
        let mut last_dot = usize::MAX;
        for (i, &c) in rest.iter().enumerate() {
            match AUTHORITY[c as usize] {
                AUTH_HOST => {}
                AUTH_DOT => {
                    if host_end.is_none() {
                        dotdot |= last_dot.wrapping_add(1) == i;
                        last_dot = i;
                    }
                }
                // A second `:` makes the port invalid.
                AUTH_COLON if host_end.is_some() => return None,
                AUTH_COLON => host_end = Some(i),
                AUTH_END => {
                    end = i;
                    break;
                }
                _ => return None,
            }
        }
        let host_end = match host_end {
            Some(h) => {
                // Indices are at ASCII bytes: character boundaries.
                let port = raw.get(sep + 3 + h + 1..sep + 3 + end)?;
                if port.is_empty() || port.parse::<u16>().is_err() {
                    return None;
                }
                h
            }
            None => end,
        };
        let host = raw.get(sep + 3..sep + 3 + host_end)?;
        let trimmed = host.strip_suffix('.').unwrap_or(host);
        let last = match trimmed.as_bytes().iter().rposition(|&c| c == b'.') {
            Some(d) => &trimmed[d + 1..],
            None => trimmed,
        };
        let numeric = last.is_empty()
            || last.bytes().all(|b| b.is_ascii_digit())
            || (last.len() >= 2
                && last[..2].eq_ignore_ascii_case("0x")
                && last[2..].bytes().all(|b| b.is_ascii_hexdigit()));
        // A `..` at the very end of the host leaves an empty last label: numeric.
        if numeric || dotdot || trimmed.starts_with('.') {
            return None;
        }
        if !self.special_allowed[special] {
            return Some(Err(UrlViolation::Scheme));
        }
        // The last label is not a number, so the name is not an IPv4 address in any form
        // (`parse_ipv4_lenient` would refuse it) and only the name rules apply.
        if !self.ssrf || self.host_allowed(trimmed) {
            return Some(Ok(()));
        }
        Some(match classify_domain_name(trimmed) {
            Some(class) if !self.class_allowed(class) => Err(UrlViolation::Ssrf(class)),
            _ => {
                if self.resolve.is_some() {
                    collect_name(trimmed);
                }
                Ok(())
            }
        })
    }

    /// Checks only the host of a URL whatever its scheme (used for resource URIs, whose
    /// schemes are the server's business), as a WHATWG parser and RFC 3986 readers read
    /// it. A URL without a host passes.
    pub fn check_host_only(&self, raw: &str) -> Result<(), UrlViolation> {
        if raw.len() > self.max_len {
            return Err(UrlViolation::TooLong);
        }
        if let Ok(url) = Url::parse(raw)
            && url.host().is_some()
        {
            self.check_parsed_host(&url)?;
        }
        self.check_rfc_hosts(raw)
    }

    fn check_parsed_host(&self, url: &Url) -> Result<(), UrlViolation> {
        if !self.ssrf {
            return Ok(());
        }
        match url.host() {
            None => {
                // `file:///path` has an empty host: allowed only if the scheme is, which
                // was checked; special schemes without host do not parse.
                if url.scheme() == "file" {
                    Ok(())
                } else {
                    Err(UrlViolation::Invalid)
                }
            }
            Some(Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            Some(Host::Domain(d)) => self.check_name(d),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        self.allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host.trim_end_matches('.')))
    }

    fn class_allowed(&self, class: AddressClass) -> bool {
        self.allow.contains(&class)
    }

    /// Checks a host name (a name, or an IPv4 address in a lenient form).
    pub fn check_name(&self, name: &str) -> Result<(), UrlViolation> {
        if !self.ssrf || self.host_allowed(name) {
            return Ok(());
        }
        if let Some(ip) = parse_ipv4_decimal_zeros(name) {
            self.check_ip(IpAddr::V4(ip))?;
        }
        if let Some(ip) = parse_ipv4_lenient(name) {
            return self.check_ip(IpAddr::V4(ip));
        }
        match classify_host_name(name) {
            Some(class) if !self.class_allowed(class) => Err(UrlViolation::Ssrf(class)),
            _ => {
                if self.resolve.is_some() {
                    collect_name(name);
                }
                Ok(())
            }
        }
    }

    /// Checks an address: the rule a fetcher should apply to the address it connects to
    /// (after DNS resolution), so that names resolving to private addresses and DNS
    /// rebinding are caught where they take effect.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), UrlViolation> {
        if !self.ssrf {
            return Ok(());
        }
        if self.host_allowed(&ip.to_string()) {
            return Ok(());
        }
        let class = classify_ip(ip);
        // A cloud metadata address is not unlocked by an allowed network around it (an
        // allowed `169.254.0.0/16` must not hand out instance credentials): only by the
        // `metadata` class or the address named in `allowed_hosts`.
        if class != Some(AddressClass::Metadata) {
            let in_allowed = |ip: IpAddr| self.allowed_networks.iter().any(|n| n.contains(&ip));
            if in_allowed(ip) {
                return Ok(());
            }
            if let IpAddr::V6(v6) = ip
                && let Some(v4) = embedded_ipv4(v6)
                && in_allowed(IpAddr::V4(v4))
            {
                return Ok(());
            }
        }
        match class {
            Some(class) if !self.class_allowed(class) => Err(UrlViolation::Ssrf(class)),
            _ => Ok(()),
        }
    }
}

/// The special schemes of the URL standard: a WHATWG parser reads `http:host`,
/// `http:/host` and `http:\\host` as `http://host/` (longest first, for suffixes).
const SPECIAL: [&str; 6] = ["https", "file", "http", "wss", "ftp", "ws"];

/// Schemes a candidate may have without `//`, besides the special ones and the allowed
/// ones: schemes whose URL a client dereferences (fetches, connects to, opens locally or
/// hands to a protocol handler that does), or that nest a URL (`jar:`, `view-source:`).
/// A `scheme:` of this list, or any `ms-*` scheme (Windows protocol handlers such as
/// `ms-msdt:`), followed by something other than a space, quote, `<`, `>` or backtick is
/// a URL candidate, and refused when the scheme is not allowed. Naming schemes that
/// dereference nothing (`mailto:`, `tel:`, `sms:`, `urn:`, `about:`, `geo:`) are not on
/// it, nor are words that are not schemes (`note: hello`, `key:value`).
const KNOWN_SCHEMES: [&str; 57] = [
    "gopher",
    "dict",
    "jar",
    "view-source",
    "ldap",
    "ldaps",
    "ldapi",
    "tftp",
    "sftp",
    "ftps",
    "ssh",
    "scp",
    "smb",
    "cifs",
    "afp",
    "telnet",
    "netdoc",
    "javascript",
    "vbscript",
    "data",
    "blob",
    "filesystem",
    "phar",
    "jndi",
    "rmi",
    "redis",
    "rediss",
    "mongodb",
    "mysql",
    "postgres",
    "postgresql",
    "jdbc",
    "nfs",
    "rtsp",
    "rtmp",
    "mms",
    "unix",
    "npipe",
    "git",
    "svn",
    "rsync",
    "news",
    "nntp",
    "snews",
    "irc",
    "ircs",
    "vnc",
    "rdp",
    "webdav",
    "dav",
    "davs",
    "s3",
    "hdfs",
    "docker",
    "search-ms",
    "mhtml",
    "hcp",
];

/// Most scheme characters read before a `:`.
const MAX_SCHEME: usize = 32;

/// Most URL candidates judged in one value: a value with more is refused as
/// `url_invalid` (each candidate costs up to the maximum URL length).
pub const MAX_URL_CANDIDATES: usize = 256;

/// Longest host string judged; longer ones are no address or forbidden name in any form.
const MAX_HOST: usize = 1024;

#[inline(always)]
fn is_scheme_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'+' | b'.' | b'-')
}

/// Tab, line feed and carriage return: removed from anywhere in the input by WHATWG parsers.
#[inline(always)]
fn is_tab_or_newline(c: u8) -> bool {
    matches!(c, b'\t' | b'\n' | b'\r')
}

/// A byte after `scheme:` that makes the `:` no URL of a scheme without `//`: a space,
/// vertical tab, form feed, quote, `<`, `>` or backtick.
#[inline(always)]
fn blank_after(c: u8) -> bool {
    matches!(c, b' ' | 0x0b | 0x0c | b'"' | b'\'' | b'<' | b'>' | b'`')
}

/// Whether the `:` at `p` of `b` may end the scheme of a URL candidate: a scheme byte
/// (or a tab or newline) before it and something other than a space, quote, `<`, `>`
/// or backtick after it. A necessary condition for [`find_urls`] and
/// [`UrlPolicy::check_value`] to find a candidate there (the argument scan's gate).
#[inline(always)]
pub(crate) fn colon_may_start_url(b: &[u8], p: usize) -> bool {
    let Some(&prev) = p.checked_sub(1).and_then(|i| b.get(i)) else {
        return false;
    };
    // After a special scheme (ending in `p`, `s` or `e`) anything may follow: WHATWG
    // parsers read `http: x@127.0.0.1` with ` x` as userinfo.
    let special_end = matches!(prev | 0x20, b'p' | b's' | b'e') || is_tab_or_newline(prev);
    (is_scheme_byte(prev) || is_tab_or_newline(prev))
        && b.get(p + 1)
            .is_some_and(|&c| special_end || !blank_after(c))
}

/// Whether `b` holds a character of the blocks whose NFKC form is ASCII (fullwidth and
/// halfwidth forms, small and vertical forms, ligatures: lead byte `EF`; enclosed and
/// letterlike forms, number forms, super- and subscripts, zero-width characters: `E2`;
/// mathematical alphanumerics: `F0 9D`; phonetic modifiers: `E1 B4`..`E1 B6`; modifier
/// letters: `CA`, `CB`; `ª`, soft hyphen, `²`, `³`, `¹`, `º`; `ſ`). Accented letters and
/// most scripts are not: text in them holds no scheme or separator a view would add.
fn has_compat_form(b: &[u8]) -> bool {
    b.windows(2).any(|w| {
        matches!(
            (w[0], w[1]),
            (0xEF | 0xE2 | 0xCA | 0xCB, _)
                | (0xF0, 0x9D)
                | (0xE1, 0xB4..=0xB6)
                | (0xC2, 0xAA | 0xAD | 0xB2 | 0xB3 | 0xB9 | 0xBA)
                | (0xC5, 0xBF)
        )
    })
}

/// Whether a decoded view of `s` may hold a `:` that `s` does not show as one after a
/// scheme: a `%`, `&` or `\` (escapes), or a `:` or a fullwidth, small or vertical colon
/// (lead byte `EF`) with a character NFKC maps to ASCII (see `has_compat_form`). Without
/// one, the views hold no `scheme:` candidate `s` lacks (and the normalized view folds
/// the slashes of network-path references).
fn view_may_add_colon(b: &[u8]) -> bool {
    memchr::memchr3(b'%', b'&', b'\\', b).is_some()
        || (!b.is_ascii() && memchr::memchr2(b':', 0xEF, b).is_some() && has_compat_form(b))
}

/// Whether a value without a `:` that may end a scheme, and without the bytes that make
/// the argument rules' normalized view differ (`%`, `&#` or `&` and a letter, `//`, `/\\`,
/// `\\\\`, `\\/` not after a `:`), may still hold a URL candidate for
/// [`UrlPolicy::check_value`]: a `\\` (`\\u002f` escapes), a tab or newline (WHATWG
/// parsers remove them: `/<TAB>/host`), or a `:` or colon form with a character NFKC maps
/// to ASCII (see `has_compat_form`).
pub(crate) fn may_hold_url_form(s: &str) -> bool {
    let b = s.as_bytes();
    memchr::memchr3(b'\\', b'\t', b'\n', b).is_some()
        || memchr::memchr(b'\r', b).is_some()
        || (!b.is_ascii() && memchr::memchr2(b':', 0xEF, b).is_some() && has_compat_form(b))
}

/// Whether `b` may hold a network-path reference: a `\\`, or a `/` followed by a `/`, a
/// tab or a newline (WHATWG parsers remove them: `/<TAB>/host`).
fn may_hold_network_path(b: &[u8]) -> bool {
    memchr::memchr(b'\\', b).is_some()
        || memchr::memchr_iter(b'/', b)
            .any(|p| matches!(b.get(p + 1), Some(b'/' | b'\t' | b'\n' | b'\r')))
}

/// A scheme, lowercase ASCII.
#[derive(Debug, Clone, Copy)]
struct Scheme {
    buf: [u8; MAX_SCHEME],
    len: usize,
}

impl Scheme {
    /// The scheme bytes of `raw`, lowercased, tabs and newlines left out.
    fn new(raw: &[u8]) -> Self {
        let mut buf = [0u8; MAX_SCHEME];
        let mut len = 0;
        for &c in raw {
            if is_scheme_byte(c) && len < MAX_SCHEME {
                buf[len] = c.to_ascii_lowercase();
                len += 1;
            }
        }
        Self { buf, len }
    }

    fn as_str(&self) -> &str {
        // ASCII only.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

fn is_known_scheme(s: &str) -> bool {
    SPECIAL.contains(&s)
        || KNOWN_SCHEMES.contains(&s)
        || s.strip_prefix("ms-").is_some_and(|r| !r.is_empty())
}

/// A URL candidate: where its scheme starts, the scheme, and whether `//` follows the
/// `:` (then a failed parse is `url_invalid`, as ever).
#[derive(Debug, Clone, Copy)]
struct Candidate {
    start: usize,
    scheme: Scheme,
    slashes: bool,
}

/// The candidates whose scheme ends at the `:` at `colon`: the scheme bytes before it
/// followed by `//` (any scheme; tabs and newlines skipped); a known scheme (`known`) followed by something (tabs
/// and newlines skipped), read with and without the tabs and newlines before the `:`;
/// and the special scheme a longer unknown scheme ends with (`xhttp:` holds `http:`).
fn candidates_at(b: &[u8], colon: usize, known: &dyn Fn(&str) -> bool) -> [Option<Candidate>; 4] {
    let mut out = [None; 4];
    let mut n = 0;
    let mut push = |c: Candidate| {
        if n < 4
            && !out[..n]
                .iter()
                .flatten()
                .any(|o: &Candidate| o.start == c.start && o.scheme.as_str() == c.scheme.as_str())
        {
            out[n] = Some(c);
            n += 1;
        }
    };
    let slashes = b.get(colon + 1..colon + 3) == Some(b"//");
    let mut next = b
        .get(colon + 1..)
        .unwrap_or_default()
        .iter()
        .take(64)
        .filter(|&&c| !is_tab_or_newline(c));
    let first = next.next().copied();
    let content = first.is_some_and(|c| !blank_after(c));
    // After a special scheme with an authority anything may follow (a space starts the
    // userinfo); `file:` has none.
    let follows = |scheme: &str| {
        if scheme != "file" && SPECIAL.contains(&scheme) {
            first.is_some()
        } else {
            content
        }
    };
    // A special scheme at the end of a longer word only before a slash or backslash
    // (`xhttp:/127.0.0.1`, not `views: 10` or `profile: x`).
    let url_like = matches!(first, Some(b'/' | b'\\'));
    // `//` with tabs or newlines inside: a candidate whatever the scheme, as with `//`.
    let slashy = slashes || (first == Some(b'/') && next.next() == Some(&b'/'));
    // Scheme bytes only.
    let mut i = colon;
    while i > 0 && colon - i < MAX_SCHEME && is_scheme_byte(b[i - 1]) {
        i -= 1;
    }
    while i < colon && !b[i].is_ascii_alphabetic() {
        i += 1;
    }
    if i < colon {
        let scheme = Scheme::new(&b[i..colon]);
        let is_known = known(scheme.as_str());
        if slashy || (is_known && follows(scheme.as_str())) {
            push(Candidate {
                start: i,
                scheme,
                slashes,
            });
        }
        if !is_known && url_like {
            let name = scheme.as_str();
            if let Some(sp) = SPECIAL
                .iter()
                .find(|sp| name.len() > sp.len() && name.ends_with(*sp))
            {
                push(Candidate {
                    start: colon - sp.len(),
                    scheme: Scheme::new(sp.as_bytes()),
                    slashes,
                });
            }
        }
    }
    // With the tabs and newlines inside the scheme removed, as WHATWG parsers do.
    let mut j = colon;
    while j > 0
        && colon - j < 2 * MAX_SCHEME
        && (is_scheme_byte(b[j - 1]) || is_tab_or_newline(b[j - 1]))
    {
        j -= 1;
    }
    while j < colon && !b[j].is_ascii_alphabetic() {
        j += 1;
    }
    if j < i {
        let scheme = Scheme::new(&b[j..colon]);
        let name = scheme.as_str();
        let is_known = known(name);
        // Any scheme with `//` when no scheme byte is right before the `:` (no strict
        // reading then).
        if (is_known && follows(name)) || (i == colon && slashy) {
            push(Candidate {
                start: j,
                scheme,
                slashes: false,
            });
        }
        if !is_known
            && url_like
            && let Some(sp) = SPECIAL
                .iter()
                .find(|sp| name.len() > sp.len() && name.ends_with(*sp))
        {
            push(Candidate {
                start: j,
                scheme: Scheme::new(sp.as_bytes()),
                slashes: false,
            });
        }
    }
    out
}

/// Where the text reading of the candidate whose `:` is at `colon` ends: the first
/// ASCII whitespace, quote, `<`, `>` or backtick after it, found sixteen bytes at a time.
fn text_end(b: &[u8], colon: usize) -> usize {
    crate::classify::flagged(b.get(colon + 1..).unwrap_or_default(), url_end_byte)
        .next()
        .map_or(b.len(), |i| colon + 1 + i)
}

/// Finds URL candidates in `s` the way clients read them, one per `:` that ends a
/// scheme: `scheme://...` whatever the scheme, and `scheme:...` without slashes for the
/// special schemes (`http`, `https`, `ws`, `wss`, `ftp`, `file`) and other known ones
/// (`gopher`, `dict`, `jar`, `view-source`, `ldap`, ...), tabs and newlines inside the
/// scheme skipped. Each candidate is cut at whitespace, a quote, `<`, `>` or a backtick
/// (what a text reader takes; [`UrlPolicy::check_value`] also judges the longer readings
/// of clients that take the whole value).
///
/// ```
/// use mcp_sanitize::ssrf::find_urls;
/// let found: Vec<_> = find_urls("see http:/127.0.0.1/x and 'https://c.d', note: ok").collect();
/// assert_eq!(found, ["http:/127.0.0.1/x", "https://c.d"]);
/// ```
pub fn find_urls(s: &str) -> impl Iterator<Item = &str> {
    let bytes = s.as_bytes();
    let mut from = 0;
    std::iter::from_fn(move || {
        loop {
            // `:` is found with memchr; most end no scheme.
            let rel = memchr::memchr(b':', bytes.get(from..)?)?;
            let colon = from + rel;
            from = colon + 1;
            if let Some(url) = url_at(s, colon) {
                return Some(url);
            }
        }
    })
}

/// A byte that ends a URL candidate: ASCII whitespace (space, tab, line feed, form feed,
/// carriage return), `"`, `'`, `<`, `>` or `` ` ``.
#[inline(always)]
fn url_end_byte(c: u8) -> u8 {
    u8::from(c == b' ')
        | u8::from(c == b'\t')
        | u8::from(c == b'\n')
        | u8::from(c == 0x0c)
        | u8::from(c == b'\r')
        | u8::from(c == b'"')
        | u8::from(c == b'\'')
        | u8::from(c == b'<')
        | u8::from(c == b'>')
        | u8::from(c == b'`')
}

/// The candidate [`find_urls`] yields for the `:` at `colon` (the one starting first),
/// or `None`.
pub(crate) fn url_at(s: &str, colon: usize) -> Option<&str> {
    let b = s.as_bytes();
    if b.get(colon) != Some(&b':') || !colon_may_start_url(b, colon) {
        return None;
    }
    let start = candidates_at(b, colon, &is_known_scheme)
        .into_iter()
        .flatten()
        .map(|c| c.start)
        .min()?;
    // Indices are at ASCII bytes or the end: character boundaries.
    s.get(start..text_end(b, colon))
}

/// Most URLs a curl glob (`{a,b}` sets, `[1-9]` / `[a-z]` ranges) may expand to; a
/// candidate with more is refused as `url_invalid`.
pub const MAX_GLOB_EXPANSIONS: usize = 64;

/// The choices of one curl `[...]` range (`[1-9]`, `[001-120]`, `[a-z]`, with an optional
/// `:step`), or `None` when `inner` is no range (an IPv6 literal stays literal, as curl
/// keeps it).
fn glob_range(inner: &str) -> Option<Vec<String>> {
    let (range, step) = match inner.split_once(':') {
        Some((r, st)) => (r, st.parse::<u64>().ok().filter(|&n| n > 0)?),
        None => (inner, 1),
    };
    let (a, b) = range.split_once('-')?;
    let limit = MAX_GLOB_EXPANSIONS as u64 + 1;
    if !a.is_empty() && a.len() <= 10 && a.bytes().all(|c| c.is_ascii_digit()) {
        let (x, y) = (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?);
        if !b.bytes().all(|c| c.is_ascii_digit()) || y < x {
            return None;
        }
        let width = if a.len() > 1 && a.starts_with('0') {
            a.len()
        } else {
            0
        };
        let n = ((y - x) / step + 1).min(limit);
        return Some(
            (0..n)
                .map(|k| format!("{:0width$}", x + k * step))
                .collect(),
        );
    }
    let (&[x], &[y]) = (a.as_bytes(), b.as_bytes()) else {
        return None;
    };
    if !(x.is_ascii_alphabetic() && y.is_ascii_alphabetic()) || y < x {
        return None;
    }
    let n = (u64::from(y - x) / step + 1).min(limit);
    Some(
        (0..n)
            .map(|k| char::from(x + (k * step) as u8).to_string())
            .collect(),
    )
}

/// The URLs curl's globbing makes of `rest` (what follows `scheme:`): `{a,b,...}` sets and
/// `[N-M]` / `[a-z]` ranges, each expanded. `None` without a glob; `Some(Err(()))` when
/// the expansions would exceed [`MAX_GLOB_EXPANSIONS`].
fn glob_expand(rest: &str) -> Option<Result<Vec<String>, ()>> {
    let mut pieces: Vec<Vec<String>> = Vec::new();
    let mut literal = String::new();
    let mut globbed = false;
    let mut total: usize = 1;
    let mut i = 0;
    while i < rest.len() {
        let tail = &rest[i..];
        let choices = match tail.as_bytes()[0] {
            b'{' => tail[1..].find(['}', '{']).and_then(|e| {
                (tail.as_bytes()[1 + e] == b'}').then(|| {
                    let set: Vec<String> = tail[1..1 + e].split(',').map(str::to_owned).collect();
                    (set, e + 2)
                })
            }),
            b'[' => tail[1..]
                .find(']')
                .and_then(|e| glob_range(&tail[1..1 + e]).map(|r| (r, e + 2))),
            _ => None,
        };
        match choices {
            Some((set, len)) => {
                globbed = true;
                total = total.saturating_mul(set.len().max(1));
                if total > MAX_GLOB_EXPANSIONS {
                    return Some(Err(()));
                }
                pieces.push(vec![std::mem::take(&mut literal)]);
                pieces.push(set);
                i += len;
            }
            None => {
                let ch = tail.chars().next().unwrap_or_default();
                literal.push(ch);
                i += ch.len_utf8().max(1);
            }
        }
    }
    if !globbed {
        return None;
    }
    pieces.push(vec![literal]);
    let mut out = vec![String::new()];
    for piece in pieces {
        out = out
            .iter()
            .flat_map(|prefix| piece.iter().map(move |p| format!("{prefix}{p}")))
            .collect();
    }
    Some(Ok(out))
}

/// A byte after which a network-path reference may start in text: any byte but those
/// that continue a word, a host or a path (ASCII letters and digits, `:`, `.`, `-`, `_`,
/// `~`, `%`, `/`, `\`). A non-ASCII byte is a boundary: Unicode spaces (NBSP, U+2028,
/// U+3000), which Python's `split()` and `strip()` remove, and punctuation (`«`); so are
/// `+` (a space in a form-encoded query, as `parse_qs` reads it), `{`, `&`, `*`, `!`, `@`.
fn net_path_boundary(c: u8) -> bool {
    !(c.is_ascii_alphanumeric()
        || matches!(c, b':' | b'.' | b'-' | b'_' | b'~' | b'%' | b'/' | b'\\'))
}

/// Rounds of decoding in [`decode_keeping_slashes`].
const MAX_VIEW_ROUNDS: usize = 4;

/// `s` with `\uXXXX` escapes (JSON inside a string) decoded, then percent-encoding and
/// HTML character references decoded up to [`MAX_VIEW_ROUNDS`] times; nothing folded.
fn decode_keeping_slashes(s: &str) -> String {
    let mut cur = unescape_json_u(s);
    for _ in 0..MAX_VIEW_ROUNDS {
        let mut next = if cur.contains('%') {
            percent_decode(&cur)
        } else {
            cur.clone()
        };
        if next.contains('&') {
            next = htmlize::unescape(&*next).into_owned();
        }
        if next == cur {
            break;
        }
        cur = next;
    }
    cur
}

/// `s` with each `\uXXXX` escape (four hex digits, not a surrogate) and `\/` decoded.
fn unescape_json_u(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let hex = tail
            .strip_prefix("\\u")
            .and_then(|h| h.get(..4))
            .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .and_then(char::from_u32);
        if let Some(ch) = hex {
            out.push(ch);
            rest = &tail[6..];
        } else if let Some(after) = tail.strip_prefix("\\/") {
            out.push('/');
            rest = after;
        } else {
            out.push('\\');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// `s` with `%XX` sequences decoded (invalid UTF-8 replaced).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            // Two hex digits: below 256.
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The host of a `host[:port]` (an IPv6 literal with its brackets). As Python's
/// `urlsplit` reads it, a `[` anywhere starts the literal and what comes before it is
/// ignored (`\\[fe80::1]` is `fe80::1`).
fn host_of(hostport: &str) -> &str {
    if let Some(open) = hostport.find('[') {
        let literal = &hostport[open..];
        return match literal.find(']') {
            Some(i) => &literal[..=i],
            None => literal,
        };
    }
    hostport.split(':').next().unwrap_or_default()
}

/// Calls `f` with each host an RFC 3986 reader may take from `rest` (what follows
/// `scheme:`): only with `//`; the authority ending at `/`, `?`, `#` (urlsplit, Go) or
/// also at `\` (urllib3); the userinfo ending at the last `@` or at any earlier one.
fn for_each_rfc_host(
    rest: &str,
    mut f: impl FnMut(&str) -> Result<(), UrlViolation>,
) -> Result<(), UrlViolation> {
    let Some(authority) = rest.strip_prefix("//") else {
        return Ok(());
    };
    let cut = |terms: &[u8]| {
        authority
            .bytes()
            .position(|c| terms.contains(&c))
            .map_or(authority, |i| &authority[..i])
    };
    let with_backslash = cut(b"/?#\\");
    let without = cut(b"/?#");
    for (k, auth) in [with_backslash, without].into_iter().enumerate() {
        if k == 1 && auth.len() == with_backslash.len() {
            break;
        }
        let mut parts = auth.split('@');
        let first = parts.next().unwrap_or_default();
        let mut after_at = false;
        for part in parts.take(16) {
            after_at = true;
            f(host_of(part))?;
        }
        if after_at {
            f(host_of(auth.rsplit('@').next().unwrap_or_default()))?;
        } else {
            f(host_of(first))?;
        }
    }
    Ok(())
}

thread_local! {
    /// The names [`UrlPolicy::check_name`] let through during one
    /// [`UrlPolicy::check_value_with`] with resolution on.
    static NAMES: std::cell::RefCell<Option<Vec<String>>> = const { std::cell::RefCell::new(None) };
}

/// Most names collected for one value (beyond, the value is refused anyway).
const MAX_COLLECTED: usize = 128;

fn collect_name(name: &str) {
    let plausible = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));
    if !plausible {
        return;
    }
    NAMES.with(|n| {
        if let Some(list) = n.borrow_mut().as_mut()
            && list.len() < MAX_COLLECTED
        {
            list.push(name.trim_end_matches('.').to_ascii_lowercase());
        }
    });
}

/// Lookups in progress (each on its own thread); beyond [`MAX_LOOKUPS`] a name is
/// refused rather than queued.
static LOOKUPS: AtomicUsize = AtomicUsize::new(0);
const MAX_LOOKUPS: usize = 64;

/// The addresses of `name` (empty when it does not resolve), or `None` when it was not
/// resolved within `timeout` or too many lookups are in progress. The lookup runs on a
/// thread of its own (`getaddrinfo` cannot be cancelled); the caller waits at most
/// `timeout`.
fn resolve_name(name: &str, timeout: Duration) -> Option<Vec<IpAddr>> {
    if LOOKUPS.fetch_add(1, Ordering::AcqRel) >= MAX_LOOKUPS {
        LOOKUPS.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let host = name.to_owned();
    let spawned = std::thread::Builder::new()
        .name("ssrf-resolve".into())
        .spawn(move || {
            let addrs: Vec<IpAddr> = (host.as_str(), 0u16)
                .to_socket_addrs()
                .map(|it| it.map(|a| a.ip()).take(64).collect())
                .unwrap_or_default();
            LOOKUPS.fetch_sub(1, Ordering::AcqRel);
            let _ = tx.send(addrs);
        });
    if spawned.is_err() {
        LOOKUPS.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    rx.recv_timeout(timeout).ok()
}

fn emit_result(
    r: Result<(), UrlViolation>,
    emit: &dyn Fn(UrlViolation) -> Result<(), UrlViolation>,
) -> Result<(), UrlViolation> {
    r.or_else(emit)
}

impl UrlPolicy {
    /// Checks every URL candidate of a text value by every reading a mainstream client may
    /// take: the candidates of [`find_urls`] (plus `scheme:` without slashes for the
    /// allowed schemes), each read as a WHATWG parser reads it (Node, browsers, the `url`
    /// crate: backslashes as slashes, tabs and newlines removed, userinfo up to the last
    /// `@`, every IPv4 form, IDNA mapping) and as RFC 3986 readers do (urllib3, Python's
    /// `urlsplit`, Go's net/url: the authority up to `/`, `?`, `#` with or without `\`,
    /// userinfo up to any `@`, IPv6 zones, percent-encoded hosts); each cut where a text
    /// reader stops (whitespace, quotes, `<`, `>`, backtick) and, when that cut falls
    /// inside the authority, also running on to the end of the value (tabs and newlines
    /// removed, at most the maximum URL length), as a client taking the whole value does.
    /// The first violation of any reading is returned.
    ///
    /// ```
    /// use mcp_sanitize::ssrf::{SsrfConfig, UrlPolicy, UrlViolation};
    /// let p = UrlPolicy::new(&["http".into(), "https".into()], 2048, &SsrfConfig::default()).unwrap();
    /// for v in ["http:/127.0.0.1:8080/mcp", "https:/\\/169.254.169.254/",
    ///           "http://example.com @127.0.0.1/", "http://example.com\t@10.0.0.1/"] {
    ///     assert!(matches!(p.check_value(v), Err(UrlViolation::Ssrf(_))), "{v}");
    /// }
    /// assert_eq!(p.check_value("file:/var/lib/app/secrets.db"), Err(UrlViolation::Scheme));
    /// assert!(p.check_value("see https://example.com for details, note: ok").is_ok());
    /// ```
    pub fn check_value(&self, s: &str) -> Result<(), UrlViolation> {
        self.check_value_with(s, 0, |_| false)
    }

    /// [`Self::check_value`] from byte `from` of `s` (where the first `:` that may end a
    /// scheme is, when known), ignoring the violations for which `skip` is true (rules
    /// exempted for a tool): the first other one is returned.
    pub fn check_value_with(
        &self,
        s: &str,
        from: usize,
        skip: impl Fn(UrlViolation) -> bool,
    ) -> Result<(), UrlViolation> {
        let emit = |v: UrlViolation| if skip(v) { Ok(()) } else { Err(v) };
        let collecting = self.resolve.is_some() && self.ssrf;
        if collecting {
            NAMES.with(|n| *n.borrow_mut() = Some(Vec::new()));
        }
        let mut result = self.scan_text(s, from, &emit);
        if result.is_ok() {
            result = self.scan_views(s, &emit);
        }
        let names = if collecting {
            NAMES.with(|n| n.borrow_mut().take()).unwrap_or_default()
        } else {
            Vec::new()
        };
        result?;
        if let Some((timeout, max_names)) = self.resolve {
            self.check_resolved(names, timeout, max_names, &emit)?;
        }
        Ok(())
    }

    /// The URL candidates of one text (`scheme:` from byte `from`, network-path
    /// references anywhere).
    fn scan_text(
        &self,
        s: &str,
        from: usize,
        emit: &dyn Fn(UrlViolation) -> Result<(), UrlViolation>,
    ) -> Result<(), UrlViolation> {
        let b = s.as_bytes();
        let known = |sc: &str| is_known_scheme(sc) || self.scheme_allowed(sc);
        let mut from = from;
        let mut judged = 0;
        while let Some(rel) = memchr::memchr(b':', b.get(from..).unwrap_or_default()) {
            let colon = from + rel;
            from = colon + 1;
            if !colon_may_start_url(b, colon) {
                continue;
            }
            for c in candidates_at(b, colon, &known).into_iter().flatten() {
                judged += 1;
                if judged > MAX_URL_CANDIDATES {
                    return emit(UrlViolation::Invalid);
                }
                self.check_candidate(s, colon, &c, emit)?;
            }
        }
        self.scan_network_paths(s, emit)
    }

    /// Network-path references (`//host/`, `/\host/`, `\\host/`, `\/host/`, `///host/`,
    /// tabs and newlines among the slashes) at the start of the value or after any byte
    /// that does not continue a word, host or path ([`net_path_boundary`]: spaces,
    /// Unicode spaces, quotes, `+`, `=`, brackets, ...): read as a client joining
    /// them to an `http:` or `https:` base reads them (WHATWG: every leading slash or
    /// backslash skipped; urljoin and urllib3: the authority after `//`). Only a forbidden
    /// host refuses: the scheme comes from the base and a reference that is no URL (a `//`
    /// comment) is no violation.
    fn scan_network_paths(
        &self,
        s: &str,
        emit: &dyn Fn(UrlViolation) -> Result<(), UrlViolation>,
    ) -> Result<(), UrlViolation> {
        if !self.ssrf {
            return Ok(());
        }
        let ssrf_only = |v: UrlViolation| match v {
            UrlViolation::Ssrf(_) => emit(v),
            _ => Ok(()),
        };
        let b = s.as_bytes();
        if !may_hold_network_path(b) {
            return Ok(());
        }
        let lead = b.iter().take_while(|&&c| c <= b' ').count();
        let mut next = 0;
        let mut judged = 0;
        for p in memchr::memchr2_iter(b'/', b'\\', b) {
            if p < next {
                continue;
            }
            let at_start = p == lead;
            if !at_start && !p.checked_sub(1).is_some_and(|k| net_path_boundary(b[k])) {
                continue;
            }
            let mut q = p;
            let mut slashes = 0;
            while let Some(&c) = b.get(q) {
                if c == b'/' || c == b'\\' {
                    slashes += 1;
                } else if !is_tab_or_newline(c) {
                    break;
                }
                q += 1;
            }
            next = q;
            // A host starts right after the slashes (`// comment` and `//` alone are none).
            let host_start = b.get(q).is_some_and(|&c| {
                !c.is_ascii() || c.is_ascii_alphanumeric() || matches!(c, b'[' | b'%' | b'@' | b'{')
            });
            if slashes < 2 || !host_start {
                continue;
            }
            judged += 1;
            if judged > MAX_URL_CANDIDATES {
                return emit(UrlViolation::Invalid);
            }
            let cut = b[q..]
                .iter()
                .position(|&c| url_end_byte(c) != 0 && !is_tab_or_newline(c))
                .map_or(b.len(), |i| q + i);
            let mut readings = vec![cut];
            if at_start && cut < b.len() {
                // A client taking the whole value reads past the space.
                readings.push(b.len());
            }
            for end in readings {
                let mut stop = end.min(q + self.max_len);
                while !s.is_char_boundary(stop) {
                    stop -= 1;
                }
                let mut url = String::from("http://");
                url.extend(
                    s.get(q..stop)
                        .unwrap_or_default()
                        .chars()
                        .filter(|ch| !matches!(ch, '\t' | '\n' | '\r')),
                );
                let url = url.trim_end_matches(|ch: char| ch <= ' ');
                self.check_reading(url, 4, false, &ssrf_only)?;
            }
        }
        Ok(())
    }

    /// The decoded views of a value, scanned as the value is: `\uXXXX` escapes of JSON held
    /// in a string, percent-encoding and HTML character references decoded (a few rounds,
    /// slashes kept as they are, for network-path references), when the value has a `%`,
    /// `&` or `\`; and, when that holds a character NFKC maps to ASCII and a `:` or colon
    /// form, [`text::normalize_for_rules`] (the same decoding, NFKC, zero-width characters
    /// removed, path separators folded). A value where neither changes anything costs one
    /// pass.
    ///
    /// [`text::normalize_for_rules`]: crate::text::normalize_for_rules
    fn scan_views(
        &self,
        s: &str,
        emit: &dyn Fn(UrlViolation) -> Result<(), UrlViolation>,
    ) -> Result<(), UrlViolation> {
        let b = s.as_bytes();
        if !view_may_add_colon(b) {
            return Ok(());
        }
        let kept = if memchr::memchr3(b'%', b'&', b'\\', b).is_some() {
            std::borrow::Cow::Owned(decode_keeping_slashes(s))
        } else {
            std::borrow::Cow::Borrowed(s)
        };
        if kept != s {
            self.scan_text(&kept, 0, emit)?;
        }
        let kb = kept.as_bytes();
        if !kb.is_ascii() && memchr::memchr2(b':', 0xEF, kb).is_some() && has_compat_form(kb) {
            let normalized = crate::text::normalize_for_rules(s);
            if let std::borrow::Cow::Owned(v) = normalized
                && v != *kept
            {
                self.scan_text(&v, 0, emit)?;
            }
        }
        Ok(())
    }

    /// Resolves the names found (deduplicated, at most `max_names`) and checks every
    /// address.
    fn check_resolved(
        &self,
        mut names: Vec<String>,
        timeout: Duration,
        max_names: usize,
        emit: &dyn Fn(UrlViolation) -> Result<(), UrlViolation>,
    ) -> Result<(), UrlViolation> {
        names.sort_unstable();
        names.dedup();
        if names.len() > max_names {
            return emit(UrlViolation::Invalid);
        }
        for name in names {
            match resolve_name(&name, timeout) {
                Some(addrs) => {
                    for ip in addrs {
                        emit_result(self.check_ip(ip), emit)?;
                    }
                }
                None => emit(UrlViolation::Invalid)?,
            }
        }
        Ok(())
    }

    fn check_candidate(
        &self,
        s: &str,
        colon: usize,
        c: &Candidate,
        emit: &dyn Fn(UrlViolation) -> Result<(), UrlViolation>,
    ) -> Result<(), UrlViolation> {
        let b = s.as_bytes();
        let end = text_end(b, colon);
        // A scheme outside the allow-list is refused unless only a space, quote, `<`, `>`
        // or backtick follows its `:` (prose such as `ws: websockets`; the host readings
        // below still apply).
        let blank = b
            .get(colon + 1..)
            .unwrap_or_default()
            .iter()
            .find(|&&x| !is_tab_or_newline(x))
            .is_none_or(|&x| blank_after(x));
        if !self.scheme_allowed(c.scheme.as_str()) && !blank {
            emit(UrlViolation::Scheme)?;
        }
        // The text reading. Indices are at ASCII bytes or the end: character boundaries.
        let text = s.get(c.start..end).unwrap_or_default();
        if text.len() > self.max_len {
            emit(UrlViolation::TooLong)?;
        } else if c.start + c.scheme.len == colon {
            self.check_reading(text, colon - c.start, c.slashes, emit)?;
        } else {
            // Tabs or newlines inside the scheme, or an unknown scheme before a special
            // one: read as `scheme:` and the rest.
            let url = format!(
                "{}{}",
                c.scheme.as_str(),
                s.get(colon..end).unwrap_or_default()
            );
            self.check_reading(&url, c.scheme.len, c.slashes, emit)?;
        }
        // The whole reading, when the text reading was cut inside the authority (by a
        // space, a quote, a tab or a newline that a client taking the whole value reads
        // past; a backslash ends it only for WHATWG parsers).
        let after = b.get(colon + 1..end).unwrap_or_default();
        let lead = after
            .iter()
            .take_while(|&&x| x == b'/' || x == b'\\')
            .count();
        let authority_ended = after[lead..]
            .iter()
            .any(|&x| matches!(x, b'/' | b'?' | b'#'));
        if end < b.len() && !authority_ended {
            let mut stop = (colon + 1 + self.max_len).min(b.len());
            while !s.is_char_boundary(stop) {
                stop -= 1;
            }
            let mut url = String::with_capacity(stop - colon + c.scheme.len);
            url.push_str(c.scheme.as_str());
            url.extend(
                s.get(colon..stop)
                    .unwrap_or_default()
                    .chars()
                    .filter(|ch| !matches!(ch, '\t' | '\n' | '\r')),
            );
            let url = url.trim_end_matches(|ch: char| ch <= ' ');
            self.check_reading(url, c.scheme.len, false, emit)?;
        }
        Ok(())
    }

    /// One reading of a candidate `url` (`scheme:` and the rest, the `:` at `colon`) by
    /// a WHATWG parser and by RFC 3986 readers; with curl globs (`{a,b}`, `[1-9]`) after
    /// the `:`, each URL curl expands them to is read too (above
    /// [`MAX_GLOB_EXPANSIONS`]: `url_invalid`).
    fn check_reading(
        &self,
        url: &str,
        colon: usize,
        slashes: bool,
        emit: &dyn Fn(UrlViolation) -> Result<(), UrlViolation>,
    ) -> Result<(), UrlViolation> {
        let rest = url.get(colon + 1..).unwrap_or_default();
        if rest.bytes().any(|c| c == b'{' || c == b'[') {
            match glob_expand(rest) {
                Some(Ok(urls)) => {
                    let scheme = url.get(..=colon).unwrap_or_default();
                    for u in urls {
                        self.check_one_reading(&format!("{scheme}{u}"), colon, false, emit)?;
                    }
                }
                Some(Err(())) => emit(UrlViolation::Invalid)?,
                None => {}
            }
        }
        self.check_one_reading(url, colon, slashes, emit)
    }

    /// [`Self::check_reading`] without glob expansion.
    fn check_one_reading(
        &self,
        url: &str,
        colon: usize,
        slashes: bool,
        emit: &dyn Fn(UrlViolation) -> Result<(), UrlViolation>,
    ) -> Result<(), UrlViolation> {
        // A plain domain (letters, digits, `.`, `-`, a port) reads the same everywhere.
        if let Some(r) = self.check_plain_domain(url) {
            return emit_result(r, emit);
        }
        match Url::parse(url) {
            Ok(parsed) if parsed.host().is_some() => {
                emit_result(self.check_parsed_host(&parsed), emit)?;
            }
            Ok(parsed) => {
                if slashes && parsed.scheme() != "file" && self.ssrf {
                    emit(UrlViolation::Invalid)?;
                }
            }
            Err(_) => {
                if slashes {
                    emit(UrlViolation::Invalid)?;
                }
            }
        }
        for_each_rfc_host(url.get(colon + 1..).unwrap_or_default(), |h| {
            emit_result(self.check_host_str(h), emit)
        })
    }

    /// Checks a host as an RFC 3986 reader passes it on: percent-decoded, an IPv6
    /// literal with or without a zone, cut at whitespace or NUL (`inet_aton` and C
    /// strings ignore what follows), then as a WHATWG host (IDNA mapping, IPv4 forms) or a lenient name.
    fn check_host_str(&self, raw: &str) -> Result<(), UrlViolation> {
        if !self.ssrf || raw.is_empty() || raw.len() > MAX_HOST {
            return Ok(());
        }
        let decoded;
        let mut h = raw;
        if h.contains('%') {
            decoded = percent_decode(h);
            h = &decoded;
        }
        if let Some(inner) = h.strip_prefix('[') {
            let inner = inner.strip_suffix(']').unwrap_or(inner);
            let addr = inner.split('%').next().unwrap_or_default();
            return match addr.parse::<Ipv6Addr>() {
                Ok(ip) => self.check_ip(IpAddr::V6(ip)),
                Err(_) => Ok(()),
            };
        }
        // A C library stops at NUL, `inet_aton` at whitespace.
        let h = h
            .split(|c: char| c.is_ascii_whitespace() || c == '\0')
            .next()
            .unwrap_or_default();
        if h.is_empty() {
            return Ok(());
        }
        // Leading zeros read as decimal by older runtimes, besides the octal reading below.
        if let Some(ip) = parse_ipv4_decimal_zeros(h) {
            self.check_ip(IpAddr::V4(ip))?;
        }
        match Host::parse(h) {
            Ok(Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Ok(Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            Ok(Host::Domain(d)) => self.check_name(&d),
            Err(_) => self.check_name(h),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> UrlPolicy {
        UrlPolicy::new(
            &["http".into(), "https".into()],
            DEFAULT_MAX_URL_LENGTH,
            &SsrfConfig::default(),
        )
        .unwrap()
    }

    #[test]
    fn platform_internal_names_and_wireserver_are_refused() {
        let p = policy();
        for (u, class) in [
            (
                "http://168.63.129.16/machine?comp=goalstate",
                AddressClass::Metadata,
            ),
            (
                "http://metadata.azure.com/metadata/instance",
                AddressClass::Metadata,
            ),
            ("https://kubernetes.default.svc/api", AddressClass::Private),
            ("https://kubernetes.default/api", AddressClass::Private),
            ("https://KUBERNETES/api", AddressClass::Private),
            (
                "http://redis.prod.svc.cluster.local:6379/",
                AddressClass::Private,
            ),
            (
                "http://host.docker.internal:2375/containers/json",
                AddressClass::Private,
            ),
            ("http://gateway.docker.internal/", AddressClass::Private),
            ("http://host.containers.internal/", AddressClass::Private),
            ("http://db.corp.internal./", AddressClass::Private),
            ("http://printer.local/", AddressClass::Private),
            ("http://nas.home.arpa/", AddressClass::Private),
        ] {
            assert_eq!(p.check(u), Err(UrlViolation::Ssrf(class)), "{u}");
        }
        for u in [
            "https://internal.example.com/",
            "https://example.com/local",
            "https://svc.example.org/",
            "https://mylocal/",
        ] {
            assert_eq!(p.check(u), Ok(()), "{u}");
        }
    }

    #[test]
    fn every_ssrf_form_is_refused() {
        let p = policy();
        for u in [
            "http://127.0.0.1/",
            "http://127.255.1.2:8080/x",
            "http://localhost/",
            "http://LOCALHOST./",
            "http://foo.localhost/",
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://0x7f.0.0.1/",
            "http://0x7f000001/",
            "http://127.1/",
            "http://0177.1/",
            "http://017700000001/",
            "http://%31%32%37.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::127.0.0.1]/",
            "http://[64:ff9b::127.0.0.1]/",
            "http://[2002:7f00:1::]/",
            "http://10.0.0.1/",
            "http://172.16.5.4/",
            "http://172.31.255.255/",
            "http://192.168.1.1/",
            "http://169.254.1.1/",
            "http://100.64.0.1/",
            "http://100.127.255.254/",
            "http://[fc00::1]/",
            "http://[fd12:3456::1]/",
            "http://[fe80::1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/",
            "http://100.100.100.200/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://metadata/",
            "http://instance-data/",
            "http://0.0.0.0/",
            "http://0/",
            "http://[::]/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://user:pass@127.0.0.1/",
            "https://evil.com@10.0.0.1/",
            "http://[::ffff:169.254.169.254]/",
            "http://0xa9.0xfe.0xa9.0xfe/",
            "http://2852039166/",
        ] {
            assert!(
                matches!(p.check(u), Err(UrlViolation::Ssrf(_))),
                "{u}: {:?}",
                p.check(u)
            );
        }
        assert_eq!(
            p.check("http://0251.0376.0251.0376/"),
            Err(UrlViolation::Ssrf(AddressClass::Metadata))
        );
    }

    #[test]
    fn non_special_schemes_are_parsed_leniently() {
        let p = UrlPolicy::new(
            &["gopher".into(), "redis".into()],
            DEFAULT_MAX_URL_LENGTH,
            &SsrfConfig::default(),
        )
        .unwrap();
        for u in [
            "gopher://2130706433/",
            "gopher://0x7f.1/",
            "redis://127.1:6379/",
            "redis://[::1]:6379",
            "redis://localhost/",
        ] {
            assert!(matches!(p.check(u), Err(UrlViolation::Ssrf(_))), "{u}");
        }
        assert!(p.check("gopher://example.com/").is_ok());
    }

    #[test]
    fn public_addresses_pass() {
        let p = policy();
        for u in [
            "https://example.com/",
            "http://8.8.8.8/",
            "http://134744072/",
            "http://[2606:4700::1111]/",
            "http://[::ffff:8.8.8.8]/",
            "https://metadata.example.com/",
            "http://100.128.0.1/",
            "http://172.32.0.1/",
        ] {
            assert_eq!(p.check(u), Ok(()), "{u}");
        }
    }

    #[test]
    fn scheme_length_invalid() {
        let p = policy();
        assert_eq!(p.check("ftp://example.com/"), Err(UrlViolation::Scheme));
        assert_eq!(p.check("file:///etc/passwd"), Err(UrlViolation::Scheme));
        assert_eq!(p.check("javascript://x"), Err(UrlViolation::Scheme));
        let long = format!("https://example.com/{}", "a".repeat(3000));
        assert_eq!(p.check(&long), Err(UrlViolation::TooLong));
        assert_eq!(p.check("http://[::1/"), Err(UrlViolation::Invalid));
        assert_eq!(p.check("http:///"), Err(UrlViolation::Invalid));
    }

    #[test]
    fn allow_lists() {
        let cfg = SsrfConfig {
            allow: vec![AddressClass::Private, AddressClass::LinkLocal],
            allowed_hosts: vec!["localhost".into()],
            allowed_networks: vec!["127.0.0.0/24".parse().unwrap()],
            ..Default::default()
        };
        let p = UrlPolicy::new(&["http".into()], 2048, &cfg).unwrap();
        assert!(p.check("http://10.1.2.3/").is_ok());
        assert!(p.check("http://169.254.1.1/").is_ok());
        assert!(p.check("http://localhost/").is_ok());
        assert!(p.check("http://127.0.0.9/").is_ok());
        assert!(p.check("http://[::ffff:127.0.0.9]/").is_ok());
        // Metadata stays refused although link-local is allowed.
        assert_eq!(
            p.check("http://169.254.169.254/"),
            Err(UrlViolation::Ssrf(AddressClass::Metadata))
        );
        // ... and although a network around it is allowed, in any form; other addresses
        // of that network pass, and naming the address itself unlocks it.
        let around = SsrfConfig {
            allowed_networks: vec![
                "169.254.0.0/16".parse().unwrap(),
                "fd00::/8".parse().unwrap(),
            ],
            ..Default::default()
        };
        let p2 = UrlPolicy::new(&["http".into()], 2048, &around).unwrap();
        for attack in [
            "http://169.254.169.254/latest/meta-data/",
            "http://2852039166/",
            "http://0xa9fea9fe/",
            "http://[::ffff:169.254.169.254]/",
            "http://169.254.170.2/v2/credentials",
            "http://[fd00:ec2::254]/",
        ] {
            assert_eq!(
                p2.check(attack),
                Err(UrlViolation::Ssrf(AddressClass::Metadata)),
                "{attack}"
            );
        }
        assert!(p2.check("http://169.254.10.20/").is_ok());
        assert!(p2.check("http://[::ffff:169.254.10.20]/").is_ok());
        let named = SsrfConfig {
            allowed_hosts: vec!["169.254.169.254".into()],
            ..Default::default()
        };
        let p3 = UrlPolicy::new(&["http".into()], 2048, &named).unwrap();
        assert!(p3.check("http://169.254.169.254/").is_ok());
        assert!(p.check("http://127.0.1.1/").is_err());
        let off = UrlPolicy::new(
            &["http".into()],
            2048,
            &SsrfConfig {
                enabled: false,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(off.check("http://127.0.0.1/").is_ok());
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = UrlPolicy::new(&["ht tp".into()], 2048, &SsrfConfig::default()).unwrap_err();
        assert!(e.to_string().contains("allowed_protocols[0]"));
        let e = UrlPolicy::new(&["http".into()], 3, &SsrfConfig::default()).unwrap_err();
        assert!(e.to_string().contains("max_url_length"));
    }

    #[test]
    fn lenient_ipv4() {
        assert_eq!(parse_ipv4_lenient("0x"), Some(Ipv4Addr::new(0, 0, 0, 0)));
        assert_eq!(parse_ipv4_lenient("1.2.3.4.5"), None);
        assert_eq!(parse_ipv4_lenient("256.1.1.1"), None);
        assert_eq!(parse_ipv4_lenient("1.2.65536"), None);
        assert_eq!(
            parse_ipv4_lenient("1.2.65535"),
            Some(Ipv4Addr::new(1, 2, 255, 255))
        );
        assert_eq!(parse_ipv4_lenient("4294967296"), None);
        assert_eq!(parse_ipv4_lenient("08.0.0.1"), None);
        assert_eq!(parse_ipv4_lenient(""), None);
        assert_eq!(parse_ipv4_lenient("1..1"), None);
    }

    #[test]
    fn fast_path_agrees_with_the_parser() {
        let p = policy();
        for u in [
            "https://example.com/a",
            "http://LOCALHOST:8080/",
            "http://metadata./x",
            "http://foo.localhost",
            "https://a-b.example.org:443?q#f",
            "ws://x.y",
            "http://127.0.0.1/",
            "http://0x7f.1/",
            "http://1.2.3.4.5/",
            "http://a..b/",
            "http://example.com:99999/",
            "http://ex_ample.com/",
            "https://xn--nxasmq6b.com/",
        ] {
            let full = Url::parse(u)
                .map_err(|_| UrlViolation::Invalid)
                .and_then(|url| {
                    if !p.scheme_allowed(url.scheme()) {
                        return Err(UrlViolation::Scheme);
                    }
                    p.check_parsed_host(&url)
                });
            assert_eq!(p.check(u), full, "{u}");
        }
    }

    fn by_parser(p: &UrlPolicy, u: &str) -> Result<(), UrlViolation> {
        if u.len() > p.max_len {
            return Err(UrlViolation::TooLong);
        }
        Url::parse(u)
            .map_err(|_| UrlViolation::Invalid)
            .and_then(|url| {
                if !p.scheme_allowed(url.scheme()) {
                    return Err(UrlViolation::Scheme);
                }
                p.check_parsed_host(&url)
            })
    }

    proptest::proptest! {
        /// The plain-domain fast path gives what the full parse gives, on URLs built from
        /// the pieces it looks at.
        #[test]
        fn fast_path_agrees_with_the_parser_on_generated_urls(
            scheme in proptest::sample::select(vec!["http", "HTTPS", "ws", "wss", "ftp", "file", "gopher", "h"]),
            labels in proptest::collection::vec("[a-zA-Z0-9-]{0,6}|0x[0-9a-f]{0,3}|[0-9]{1,4}|localhost|metadata|_|%31", 0..5),
            dots in proptest::collection::vec(proptest::sample::select(vec![".", "..", ""]), 5),
            trailing in proptest::sample::select(vec!["", ".", ".."]),
            port in proptest::option::of("[0-9]{0,6}|:|x|[0-9]:[0-9]"),
            tail in proptest::sample::select(vec!["", "/", "/a/b", "?q=1", "#f", "/x?y#z", "@evil.com/"]),
        ) {
            let mut host = String::new();
            for (i, l) in labels.iter().enumerate() {
                if i > 0 {
                    host.push_str(dots[i]);
                }
                host.push_str(l);
            }
            host.push_str(trailing);
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let u = format!("{scheme}://{host}{port}{tail}");
            let p = policy();
            proptest::prop_assert_eq!(p.check(&u), by_parser(&p, &u), "{}", u);
        }
    }

    /// Values that real clients (WHATWG parsers as Node and browsers, urllib3 and
    /// `urlsplit`, Go's net/url) read as a URL to a forbidden address or with a scheme
    /// outside the allow-list: each class with several variants.
    #[test]
    fn client_readings_are_refused() {
        let p = policy();
        let ssrf = |s: &str| matches!(p.check_value(s), Err(UrlViolation::Ssrf(_)));
        let refused = |s: &str| p.check_value(s).is_err();
        // Special schemes without `//`, with one slash, with backslashes, any case.
        for v in [
            "http:/127.0.0.1:8080/mcp",
            "http:\\\\169.254.169.254\\latest",
            "http:169.254.169.254/x",
            "https:/\\/169.254.169.254/",
            "HTTP:/127.0.0.1/",
            "hTtP:/\\127.0.0.1",
            "http:\\127.0.0.1",
            "https:127.1",
            "HTTPS:\\\\[::1]\\x",
            "see http:/10.0.0.1/admin now",
            "https:127.0.0.1:6379",
            "https:/\\localhost",
            "http:0x7f.1",
            "xhttp:/127.0.0.1/",
            // urlsplit takes the IPv6 literal after a `[` anywhere in the host part.
            "http://example.com'@\\[fe80::1%25eth0]:/",
            "http://x@ab[::1]/",
            "http://a[127.0.0.1]/",
        ] {
            assert!(refused(v), "{v:?}: {:?}", p.check_value(v));
        }
        // Tabs and newlines are removed by WHATWG parsers, anywhere.
        for v in [
            "http://example.com\t@169.254.169.254/",
            "http://example.com\n@127.0.0.1/",
            "ht\ttp:/127.0.0.1/",
            "http:\n//127.0.0.1/",
            "http://127.0.\t0.1/",
            "h\nttp://[::1]/",
        ] {
            assert!(refused(v), "{v:?}: {:?}", p.check_value(v));
        }
        // Userinfo that ends at a quote or a space for a text reader, and at the `@`
        // for urllib3 and WHATWG; several `@`; backslash before `@` (urlsplit).
        for v in [
            "http://example.com'@127.0.0.1/",
            "http://example.com @127.0.0.1/",
            "http://example.com\"@127.0.0.1/",
            "http://example.com`@10.0.0.1/",
            "http://example.com<@192.168.1.1/",
            "http://a@b@127.0.0.1/",
            "http://evil.com\\@127.0.0.1/",
            "https://example.com @169.254.169.254:80/latest",
            "fetch http://example.com @localhost/ please",
        ] {
            assert!(refused(v), "{v:?}: {:?}", p.check_value(v));
        }
        // IPv4 forms, IPv6 forms, percent-encoded hosts, IDNA and fullwidth forms.
        for v in [
            "http://0/",
            "http://0x7f.1/",
            "http://0177.1/",
            "http://[::ffff:7f00:1]",
            "http://[::ffff:127.0.0.1]/",
            "http://[0:0:0:0:0:ffff:a9fe:a9fe]/",
            "http://[fe80::1%25eth0]/",
            "http://[::1%25lo]:8080/",
            "http://%31%32%37.0.0.1/",
            "http://%6c%6f%63%61%6c%68%6f%73%74/",
            "http://①②⑦.0.0.1",
            "http://127。0。0。1/",
            "http://１２７.０.０.１/",
            "http://LOCALHOST%2e/",
            "http://127.0.0.1 foo/",
        ] {
            assert!(refused(v), "{v:?}: {:?}", p.check_value(v));
        }
        // Schemes outside the allow-list without `//`, and schemes that nest URLs.
        for v in [
            "file:/var/lib/app/secrets.db",
            "file:/etc/passwd",
            "FILE:\\\\server\\share",
            "file:c:/windows/win.ini",
            "file:etc/passwd",
            "gopher:127.0.0.1:6379/_FLUSHALL",
            "gopher://example.com/_x",
            "dict:127.0.0.1:11211/stat",
            "jar:https://example.com/a.jar!/x",
            "view-source:https://example.com/",
            "ldap:127.0.0.1",
            "javascript:alert(1)",
            "netdoc:/etc/passwd",
        ] {
            assert!(refused(v), "{v:?}");
        }
        // The issue's examples are refused for their host.
        for v in [
            "http:/127.0.0.1:8080/mcp",
            "http:\\\\169.254.169.254\\latest",
            "http:169.254.169.254/x",
            "https:/\\/169.254.169.254/",
            "http://example.com'@127.0.0.1/",
            "http://example.com @127.0.0.1/",
            "http://example.com\t@169.254.169.254/",
        ] {
            assert!(ssrf(v), "{v:?}: {:?}", p.check_value(v));
        }
        // A nested URL is judged too.
        for v in [
            "jar:http://127.0.0.1/a.jar!/x",
            "view-source:http://169.254.169.254/",
        ] {
            let allowing = UrlPolicy::new(
                &["http".into(), "jar".into(), "view-source".into()],
                DEFAULT_MAX_URL_LENGTH,
                &SsrfConfig::default(),
            )
            .unwrap();
            assert!(
                matches!(allowing.check_value(v), Err(UrlViolation::Ssrf(_))),
                "{v:?}"
            );
        }
    }

    /// Ordinary prose, code and URLs stay allowed.
    #[test]
    fn ordinary_values_pass() {
        let p = policy();
        for v in [
            "see https://example.com/x for details",
            "see https://example.com for details",
            "note: this is fine",
            "key:value and a:b",
            "time 12:30:45",
            "Protocols http: and https: are common",
            "ws: websockets, ftp: files, file: report.pdf",
            "views: 10, news: none, Profile: bob, windows: 3, rows:5",
            "reviews:\tfine",
            "the data: 42 rows",
            "email bob@example.org or see https://example.com",
            "C:\\Users\\bob\\file.txt",
            "std::vec::Vec<u8>",
            "https://example.com/a?next=https://example.org/b",
            "mailto:bob@example.org",
            "urn:isbn:0451450523",
            "ratio 3:1",
            "http://8.8.8.8/",
            "https://[2606:4700::1111]/",
            "https://user@example.com/",
            "http:/example.com/x",
        ] {
            assert_eq!(p.check_value(v), Ok(()), "{v:?}");
        }
    }

    /// With resolution on, a name that resolves to a loopback address (this machine's
    /// host name, which /etc/hosts maps to 127.0.0.1 or 127.0.1.1) is refused; off (the
    /// default), it passes; a name that does not exist passes; bad settings name the key.
    #[test]
    fn opt_in_resolution_refuses_names_of_forbidden_addresses() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .unwrap()
            .trim()
            .to_owned();
        let addrs: Vec<IpAddr> = (host.as_str(), 0u16)
            .to_socket_addrs()
            .unwrap()
            .map(|a| a.ip())
            .collect();
        assert!(
            addrs.iter().any(|a| classify_ip(*a).is_some()),
            "this test needs the host name {host:?} to resolve to a non-public address: {addrs:?}"
        );
        let url = format!("see http://{host}:8080/admin now");
        assert_eq!(policy().check_value(&url), Ok(()));
        let cfg = SsrfConfig {
            resolve: ResolveConfig {
                enabled: true,
                timeout_ms: 20_000,
                max_names: 2,
            },
            ..Default::default()
        };
        let p = UrlPolicy::new(&["http".into(), "https".into()], 2048, &cfg).unwrap();
        assert!(
            matches!(p.check_value(&url), Err(UrlViolation::Ssrf(_))),
            "{:?}",
            p.check_value(&url)
        );
        // Through the other readings too.
        let odd = format!("http://example.com @{host}/");
        assert!(matches!(p.check_value(&odd), Err(UrlViolation::Ssrf(_))));
        // A name that does not exist passes (`.invalid` never resolves).
        assert_eq!(p.check_value("http://no-such-name.invalid/"), Ok(()));
        // More names than `max_names` in one value.
        assert_eq!(
            p.check_value("http://a.invalid/ http://b.invalid/ http://c.invalid/"),
            Err(UrlViolation::Invalid)
        );
        for (r, key) in [
            (
                ResolveConfig {
                    timeout_ms: 0,
                    ..Default::default()
                },
                "ssrf.resolve.timeout_ms",
            ),
            (
                ResolveConfig {
                    max_names: 65,
                    ..Default::default()
                },
                "ssrf.resolve.max_names",
            ),
        ] {
            let cfg = SsrfConfig {
                resolve: r,
                ..Default::default()
            };
            let e = UrlPolicy::new(&["http".into()], 2048, &cfg).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn url_end_bytes() {
        for c in 0u8..=255 {
            let ends = c.is_ascii_whitespace() || matches!(c, b'"' | b'\'' | b'<' | b'>' | b'`');
            assert_eq!(url_end_byte(c) != 0, ends, "{c:#x}");
        }
    }

    /// `find_urls` as a plain loop over the bytes.
    fn find_urls_plain(s: &str) -> Vec<&str> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        for sep in 0..b.len() {
            if b.get(sep..sep + 3) != Some(b"://") {
                continue;
            }
            let mut start = sep;
            while start > 0 && sep - start < 32 {
                let c = b[start - 1];
                if c.is_ascii_alphanumeric() || matches!(c, b'+' | b'.' | b'-') {
                    start -= 1;
                } else {
                    break;
                }
            }
            while start < sep && !b[start].is_ascii_alphabetic() {
                start += 1;
            }
            if start == sep {
                continue;
            }
            let mut end = sep + 3;
            while end < b.len()
                && !b[end].is_ascii_whitespace()
                && !matches!(b[end], b'"' | b'\'' | b'<' | b'>' | b'`')
            {
                end += 1;
            }
            out.extend(s.get(start..end));
        }
        out
    }

    proptest::proptest! {
        /// Every `scheme://` candidate of the former finder (a plain loop) is still found
        /// (or one that ends with it, when tabs inside the scheme make a longer known
        /// scheme), and every candidate passes the scan's gate.
        #[test]
        fn url_finder_finds_every_slashes_candidate(s in "([a-zA-Z0-9+.\t-]{0,5}(://|:/|:\\\\|:)[a-z0-9./@\\\\]{0,30}[ \t\n\x0b\x0c\r\"'<>`é]?){0,4}") {
            let found: Vec<&str> = find_urls(&s).collect();
            for old in find_urls_plain(&s) {
                proptest::prop_assert!(found.iter().any(|f| f.ends_with(old)), "{:?} misses {:?}: {:?}", s, old, found);
            }
            let b = s.as_bytes();
            let gated = (0..b.len()).filter(|&p| b[p] == b':' && colon_may_start_url(b, p)).count();
            proptest::prop_assert!(found.len() <= gated);
            for f in &found {
                let colon = f.find(':').unwrap();
                proptest::prop_assert!(f[..colon].bytes().all(|c| is_scheme_byte(c) || is_tab_or_newline(c)), "{:?}", f);
            }
        }
    }

    #[test]
    fn url_finder() {
        let found: Vec<_> =
            find_urls("see http://a.b/x and 'https://c.d' then ://x and 9ftp://e").collect();
        assert_eq!(found, vec!["http://a.b/x", "https://c.d", "ftp://e"]);
        assert_eq!(find_urls("no urls here").count(), 0);
        assert_eq!(find_urls("é://x").count(), 0);
    }
}

#[cfg(test)]
mod url_forms {
    use super::*;

    fn policy() -> UrlPolicy {
        UrlPolicy::new(
            &["http".into(), "https".into()],
            DEFAULT_MAX_URL_LENGTH,
            &SsrfConfig::default(),
        )
        .unwrap()
    }

    fn refused(p: &UrlPolicy, cases: &[&str]) -> Vec<String> {
        cases
            .iter()
            .filter(|v| p.check_value(v).is_ok())
            .map(|v| format!("{v:?}"))
            .collect()
    }

    #[test]
    fn network_path_references_to_forbidden_hosts_are_refused() {
        let p = policy();
        let cases = [
            "//169.254.169.254/latest/meta-data/",
            "/\\169.254.169.254/latest/",
            "\\\\169.254.169.254/latest/",
            "\\/169.254.169.254/",
            "///169.254.169.254/",
            "/\t/169.254.169.254/",
            "//[::1]/",
            "//0x7f000001/",
            "//metadata.google.internal/computeMetadata/v1/",
            "//localhost:9101/",
            "  //127.0.0.1/x",
            "see //10.0.0.1/admin for it",
            "<a href=\"//192.168.0.1/\">x</a>",
            "next=//127.0.0.1",
            "\\\\localhost\\c$\\secrets",
            "//user@127.0.0.1/",
            "//example.com@169.254.169.254/",
            "//127.0.0.1\\@example.com/",
            // After Unicode spaces and punctuation (Python's split() and strip() remove
            // the spaces), and after a form-encoded space.
            "\u{a0}//169.254.169.254/",
            "\u{2028}//169.254.169.254/",
            "\u{3000}//169.254.169.254/",
            "\u{2009}//169.254.169.254/",
            "\u{1680}//169.254.169.254/",
            "«//169.254.169.254/»",
            "https://example.com/?to=+//169.254.169.254/",
            "{//169.254.169.254/}",
            "a&//169.254.169.254/",
            "*//169.254.169.254/",
            "!//169.254.169.254/",
            "@//169.254.169.254/",
            "https://example.com/?to=%E2%80%A8%2F%2F169.254.169.254%2F",
        ];
        assert_eq!(refused(&p, &cases), Vec::<String>::new());
        for ok in [
            "//example.com/x",
            "// a comment in code",
            "// TODO: fix the parser",
            "a//b/c",
            "C:\\\\Users\\\\ann",
            "\\\\fileserver\\share\\doc.txt",
            "src//lib.rs",
            "https://example.com//x",
        ] {
            assert_eq!(p.check_value(ok), Ok(()), "{ok:?}");
        }
        // Code with many `//` comments is no run of URL candidates.
        let code = "let x = 1; // a comment\n".repeat(400);
        assert_eq!(p.check_value(&code), Ok(()));
        assert!(p.check_value(&format!("{code}//127.0.0.1/")).is_err());
    }

    #[test]
    fn curl_globs_are_expanded() {
        let p = policy();
        let cases = [
            "http://{169.254.169.254}/latest/meta-data/",
            "http://{example.com,169.254.169.254}/latest/",
            "http://{127.0.0.1}:9101/",
            "http://127.0.0.{1,2}/",
            "http://{localhost,x}/",
            "http://{metadata.google.internal,x}/",
            "http://169.254.169.[250-254]/",
            "http://127.0.0.[1-2:1]/",
            "http://[a-c].{x,localhost}/",
            "curl 'http://{a,10.0.0.1}/' -o x",
        ];
        assert_eq!(refused(&p, &cases), Vec::<String>::new());
        assert_eq!(
            p.check_value("http://{a,b}{c,d}{e,f}{g,h}{i,j}{k,l}{m,n}/"),
            Err(UrlViolation::Invalid)
        );
        assert_eq!(
            p.check_value("http://h[0-999]/"),
            Err(UrlViolation::Invalid)
        );
        for ok in [
            "https://api.example.com/users/{id}",
            "https://{a,b}.example.com/",
            "http://[2606:4700::1111]/",
        ] {
            assert_eq!(p.check_value(ok), Ok(()), "{ok:?}");
        }
        assert_eq!(
            glob_expand("//a[08-10]/").unwrap().unwrap(),
            ["//a08/", "//a09/", "//a10/"]
        );
    }

    #[test]
    fn decoded_views_are_read() {
        let p = policy();
        let cases = [
            "https://example.com/redirect?to=http%3A%2F%2F169.254.169.254%2Flatest%2F",
            "https://example.com/?u=http:%2F%2F127.0.0.1",
            "https://example.com/?u=http%3A//127.0.0.1/",
            "https://example.com/?u=http%253A%252F%252F127.0.0.1",
            "http%3A%2F%2F169.254.169.254%2F",
            "http%3a//127.0.0.1/",
            "http:%2F%2F127.0.0.1/",
            "http&#58;//127.0.0.1/",
            "http&colon;//127.0.0.1/",
            "http:&#47;&#47;127.0.0.1/",
            "http://127&#46;0.0.1/",
            "\u{ff48}\u{ff54}\u{ff54}\u{ff50}://127.0.0.1/",
            "http\u{ff1a}//127.0.0.1/",
            "http:\u{ff0f}\u{ff0f}127.0.0.1/",
            "h\u{200b}tt\u{200b}p\u{ff1a}//127.0.0.1/",
            "\u{24d7}\u{24e3}\u{24e3}\u{24df}://127.0.0.1/",
            "caf\u{e9} \u{ff48}ttp://10.0.0.1/",
            "{\"url\":\"http:\\u002f\\u002f169.254.169.254\\u002flatest\"}",
            "http\\u003a\\u002f\\u002f127.0.0.1/",
            "?next=%2F%2F169.254.169.254%2F",
            "&#47;&#47;127.0.0.1/",
            "file%3A%2F%2F%2Fetc%2Fpasswd",
        ];
        assert_eq!(refused(&p, &cases), Vec::<String>::new());
        for ok in [
            "https://example.com/?q=%3Cb%3E",
            "https://example.com/?to=https%3A%2F%2Fexample.org%2F",
            "Tom &amp; Jerry: 100% fun",
            "\u{ff48}\u{ff54}\u{ff54}\u{ff50}://example.com/",
            "C:\\temp\\new",
        ] {
            assert_eq!(p.check_value(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn leading_zero_octets_are_also_read_as_decimal() {
        let p = policy();
        let cases = [
            "http://010.0.0.1/",
            "http://0127.0.0.1/",
            "http://0172.016.0.1/",
            "http://010.1/",
            "http://0192.0168.1.1/",
            "//0127.0.0.1/",
            "http://example.com@0127.0.0.1/",
        ];
        assert_eq!(refused(&p, &cases), Vec::<String>::new());
        assert_eq!(p.check_value("http://01.1.1.1/"), Ok(()));
        assert_eq!(parse_ipv4_decimal_zeros("0256.0.0.1"), None);
        assert_eq!(
            p.check_name("0127.0.0.1"),
            Err(UrlViolation::Ssrf(AddressClass::Loopback))
        );
    }

    #[test]
    fn slashless_schemes_outside_the_allow_list_are_refused() {
        let p = policy();
        for v in [
            "data:text/plain,hi",
            "unix:/var/run/docker.sock",
            "ftps:127.0.0.1",
            "git:127.0.0.1",
            "svn:127.0.0.1",
            "news:127.0.0.1",
            "ms-msdt:/id PCWDiagnostic",
            "ms-settings:privacy",
            "search-ms:query=x",
            "npipe:////./pipe/docker_engine",
            "see data:text/html,<script>",
        ] {
            assert_eq!(p.check_value(v), Err(UrlViolation::Scheme), "{v:?}");
        }
        for ok in [
            "note: hello",
            "data: 5 rows",
            "key:value",
            "mailto:ann@example.com",
            "tel:+15550100199",
            "urn:isbn:1",
            "about:blank",
            "ms-: x",
            "git: the tool",
        ] {
            assert_eq!(p.check_value(ok), Ok(()), "{ok:?}");
        }
    }
}
