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
//! **Limitation (DNS):** no name is resolved on the request path. A name that resolves to
//! a private address (`127.0.0.1.nip.io`, an attacker's domain, or one that changes
//! answer between check and use: DNS rebinding) passes these rules. The component that
//! fetches the URL must check the address it actually connects to: [`UrlPolicy::check_ip`]
//! is the same rule for that purpose (call it from the HTTP client's resolver or connector).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
    /// `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`, site-local `fec0::/10`.
    Private,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// Carrier-grade NAT, `100.64.0.0/10`.
    SharedAddressSpace,
    /// Unique local IPv6, `fc00::/7`.
    UniqueLocal,
    /// Cloud metadata services: `169.254.169.254`, `169.254.169.123`, `169.254.170.2`,
    /// `fd00:ec2::254`, `100.100.100.200`, `192.0.0.192`, and the names
    /// `metadata.google.internal`, `metadata.goog`, `metadata`, `instance-data` (and
    /// `.ec2.internal`), `metadata.azure.internal`, `metadata.packet.net`. Refused unless
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

const METADATA_V4: [Ipv4Addr; 5] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(100, 100, 100, 200),
    Ipv4Addr::new(192, 0, 0, 192),
    Ipv4Addr::new(169, 254, 169, 123),
];
const METADATA_V6: [Ipv6Addr; 1] = [Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254)];
const METADATA_NAMES: [&str; 7] = [
    "metadata.google.internal",
    "metadata.goog",
    "metadata",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.azure.internal",
    "metadata.packet.net",
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
    let (last, init) = nums[..count].split_last()?;
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

/// The name rules of [`classify_host_name`] (metadata and loopback names), for a name
/// without trailing dots that is known not to be an address.
fn classify_domain_name(h: &str) -> Option<AddressClass> {
    let is = |list: &[&str]| list.iter().any(|n| n.eq_ignore_ascii_case(h));
    if is(&METADATA_NAMES) {
        return Some(AddressClass::Metadata);
    }
    const SUFFIX: &str = ".localhost";
    let localhost_suffix = h.len() > SUFFIX.len()
        && h.is_char_boundary(h.len() - SUFFIX.len())
        && h[h.len() - SUFFIX.len()..].eq_ignore_ascii_case(SUFFIX);
    if is(&LOOPBACK_NAMES) || localhost_suffix {
        return Some(AddressClass::Loopback);
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
}

impl Default for SsrfConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            allow: Vec::new(),
            allowed_hosts: Vec::new(),
            allowed_networks: Vec::new(),
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
        let special_allowed = SPECIAL_SCHEMES.map(|sp| out.iter().any(|s| s == sp));
        Ok(Self {
            schemes: out,
            special_allowed,
            max_len,
            ssrf: ssrf.enabled,
            allow: ssrf.allow.clone(),
            allowed_hosts: hosts,
            allowed_networks: ssrf.allowed_networks.clone(),
        })
    }

    /// Whether `scheme` (lowercase) is allowed.
    pub fn scheme_allowed(&self, scheme: &str) -> bool {
        self.schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme))
    }

    /// Checks a URL: length, scheme, then the host.
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
        self.check_parsed_host(&url)
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
            _ => Ok(()),
        })
    }

    /// Checks only the host of a URL whatever its scheme (used for resource URIs, whose
    /// schemes are the server's business). A URL without a host passes.
    pub fn check_host_only(&self, raw: &str) -> Result<(), UrlViolation> {
        if raw.len() > self.max_len {
            return Err(UrlViolation::TooLong);
        }
        let Ok(url) = Url::parse(raw) else {
            return Ok(());
        };
        if url.host().is_none() {
            return Ok(());
        }
        self.check_parsed_host(&url)
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
        if let Some(ip) = parse_ipv4_lenient(name) {
            return self.check_ip(IpAddr::V4(ip));
        }
        match classify_host_name(name) {
            Some(class) if !self.class_allowed(class) => Err(UrlViolation::Ssrf(class)),
            _ => Ok(()),
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

/// Finds URL-looking substrings of `s`: every `scheme://...` up to whitespace, a quote,
/// `<`, `>` or a backtick.
pub fn find_urls(s: &str) -> impl Iterator<Item = &str> {
    let bytes = s.as_bytes();
    let mut from = 0;
    std::iter::from_fn(move || {
        loop {
            // `:` is found with memchr; most are not followed by `//`.
            let rel = memchr::memchr(b':', bytes.get(from..)?)?;
            let sep = from + rel;
            from = sep + 1;
            if bytes.get(sep + 1..sep + 3) != Some(b"//") {
                continue;
            }
            from = sep + 3;
            if let Some(url) = url_at(s, sep) {
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

/// The URL whose `://` starts at `sep` (the candidate [`find_urls`] yields for it), or
/// `None` for a `://` without a scheme (a protocol-relative URL is not checked here).
pub(crate) fn url_at(s: &str, sep: usize) -> Option<&str> {
    let bytes = s.as_bytes();
    if bytes.get(sep..sep + 3) != Some(b"://") {
        return None;
    }
    // Walk back over scheme characters (at most 32).
    let mut start = sep;
    while start > 0 && sep - start < 32 {
        let c = bytes[start - 1];
        if c.is_ascii_alphanumeric() || matches!(c, b'+' | b'.' | b'-') {
            start -= 1;
        } else {
            break;
        }
    }
    // The scheme must start with a letter; skip leading non-letters.
    while start < sep && !bytes[start].is_ascii_alphabetic() {
        start += 1;
    }
    if start == sep {
        return None;
    }
    // The end: ASCII whitespace (as `u8::is_ascii_whitespace`), a quote, `<`, `>` or a
    // backtick, found sixteen bytes at a time.
    let end = crate::classify::flagged(bytes.get(sep + 3..)?, url_end_byte)
        .next()
        .map_or(bytes.len(), |i| sep + 3 + i);
    // Indices are at ASCII bytes or the end: character boundaries.
    s.get(start..end)
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
        #[test]
        fn url_finder_equals_plain_loop(s in "([a-z0-9+.-]{0,4}(://|:/|:)[a-z./]{0,30}[ \t\n\x0b\x0c\r\"'<>`é]?){0,4}") {
            let found: Vec<&str> = find_urls(&s).collect();
            proptest::prop_assert_eq!(found, find_urls_plain(&s));
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
