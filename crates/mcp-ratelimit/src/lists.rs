//! Allow and deny lists of IP networks.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::ConfigError;

/// A list of networks. Entries are CIDR networks (`10.0.0.0/8`, `2001:db8::/32`) or single
/// addresses (`203.0.113.9`, `::1`). Host names are refused: the list is checked on the
/// request path, where no name is ever resolved.
#[derive(Debug, Clone, Default)]
pub(crate) struct NetList(Vec<IpNet>);

impl NetList {
    pub(crate) fn parse(key: &str, entries: &[String]) -> Result<Self, ConfigError> {
        let mut nets = Vec::with_capacity(entries.len());
        for (i, raw) in entries.iter().enumerate() {
            nets.push(
                parse_entry(raw).map_err(|rule| ConfigError::InvalidNetwork {
                    key: format!("{key}[{i}]"),
                    value: raw.clone(),
                    rule,
                })?,
            );
        }
        Ok(Self(nets))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` (canonical: IPv4-mapped IPv6 addresses are IPv4) is in a network.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }
}

pub(crate) fn parse_entry(raw: &str) -> Result<IpNet, &'static str> {
    let s = raw.trim();
    if s.is_empty() {
        return Err("is empty; expected an IP address or a CIDR network");
    }
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(canonical_net(net.trunc()));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(canonical_net(IpNet::from(ip)));
    }
    let looks_like_name = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && s.bytes().any(|b| b.is_ascii_alphabetic());
    if looks_like_name {
        Err(
            "is a host name; only IP addresses and CIDR networks are accepted (names are never resolved on the request path: list the addresses instead)",
        )
    } else {
        Err("is not an IP address or a CIDR network")
    }
}

/// `::ffff:10.0.0.0/104` is the IPv4 network `10.0.0.0/8`: client IPs are canonical, so
/// the list must be too.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
        && let Ok(n) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(n.trunc());
    }
    net
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn list(e: &[&str]) -> NetList {
        NetList::parse(
            "whitelist",
            &e.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn v4_v6_and_single_addresses() {
        let l = list(&["10.0.0.0/8", "2001:db8::/32", "203.0.113.9", "::1"]);
        for ip in [
            "10.1.2.3",
            "2001:db8::5",
            "203.0.113.9",
            "::1",
            "::ffff:10.9.9.9",
        ] {
            assert!(l.contains(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["11.0.0.1", "2001:db9::1", "203.0.113.10", "::2"] {
            assert!(!l.contains(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn mapped_network_is_canonical() {
        let l = list(&["::ffff:192.168.0.0/112"]);
        assert!(l.contains("192.168.3.4".parse().unwrap()));
    }

    #[test]
    fn host_names_are_refused_with_the_key() {
        let e = NetList::parse(
            "blacklist",
            &["10.0.0.0/8".into(), "malicious.example.com".into()],
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("blacklist[1]"), "{msg}");
        assert!(msg.contains("host name"), "{msg}");
        assert!(NetList::parse("blacklist", &["10.0.0.0/33".into()]).is_err());
        assert!(NetList::parse("blacklist", &["".into()]).is_err());
    }

    proptest! {
        #[test]
        fn entry_parser_never_panics(s in ".{0,60}") {
            let _ = parse_entry(&s);
        }

        #[test]
        fn every_v4_cidr_round_trips(a in any::<u32>(), len in 0u8..=32) {
            let net = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(a), len).unwrap();
            let parsed = parse_entry(&net.to_string()).unwrap();
            prop_assert!(parsed.contains(&IpAddr::V4(std::net::Ipv4Addr::from(a))));
        }
    }
}
