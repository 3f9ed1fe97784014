//! URL candidate finding (`mcp_sanitize::ssrf::find_urls`) and classification
//! (`UrlPolicy`, the address classifiers, the lenient IPv4 reader).
//!
//! Properties: no panic; verdicts deterministic; a candidate the policy allows never has
//! a host that the `url` crate (the WHATWG parser the policy and Node-like clients use)
//! reads as a forbidden address; an IPv4-mapped IPv6 address is classified as its IPv4
//! address; where the `url` crate reads a host as an IPv4 address, so does
//! `parse_ipv4_lenient`.
#![no_main]

use std::net::{IpAddr, Ipv6Addr};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use mcp_sanitize::ssrf::{self, SsrfConfig, UrlPolicy};

static POLICY: LazyLock<UrlPolicy> = LazyLock::new(|| {
    UrlPolicy::new(
        &["http".to_owned(), "https".to_owned()],
        2048,
        &SsrfConfig::default(),
    )
    .expect("valid policy")
});

/// Whether the `url` crate reads `raw` as a URL whose host is a forbidden address.
fn url_crate_forbidden(raw: &str) -> Option<String> {
    let url = url::Url::parse(raw).ok()?;
    let ip = match url.host()? {
        url::Host::Ipv4(a) => IpAddr::V4(a),
        url::Host::Ipv6(a) => IpAddr::V6(a),
        url::Host::Domain(_) => return None,
    };
    ssrf::classify_ip(ip).map(|c| format!("{ip} is {c:?}"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let policy = &*POLICY;
    let first = policy.check(s);
    assert_eq!(first, policy.check(s), "check not deterministic");
    if first.is_ok()
        && let Some(why) = url_crate_forbidden(s)
    {
        panic!("allowed, but the url crate reaches {why}");
    }
    let _ = policy.check_host_only(s);
    let _ = policy.check_name(s);

    let found: Vec<&str> = ssrf::find_urls(s).collect();
    let again: Vec<&str> = ssrf::find_urls(s).collect();
    assert_eq!(found, again, "find_urls not deterministic");
    for c in found {
        if policy.check(c).is_ok()
            && let Some(why) = url_crate_forbidden(c)
        {
            panic!("candidate {c:?} allowed, but the url crate reaches {why}");
        }
    }

    // The host readers on the whole input taken as a host.
    if s.len() <= 256 {
        let lenient = ssrf::parse_ipv4_lenient(s);
        if let Some(a) = lenient {
            let mapped = Ipv6Addr::from(a.to_ipv6_mapped());
            assert_eq!(
                ssrf::classify_ipv4(a),
                ssrf::classify_ipv6(mapped),
                "{a} and {mapped} classified differently"
            );
        }
        let _ = ssrf::classify_host_name(s);
        if !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_graphic())
            && !s.contains(['/', '?', '#', '@', ':', '\\', '[', ']', '%'])
            && let Ok(url) = url::Url::parse(&format!("http://{s}/"))
            && let Some(url::Host::Ipv4(a)) = url.host()
        {
            assert_eq!(lenient, Some(a), "the url crate reads {s:?} as {a}");
        }
    }
    if data.len() >= 16 {
        let mut b = [0u8; 16];
        b.copy_from_slice(&data[..16]);
        let v6 = Ipv6Addr::from(b);
        let _ = ssrf::classify_ipv6(v6);
        let _ = policy.check_ip(IpAddr::V6(v6));
        if let Some(v4) = ssrf::embedded_ipv4(v6) {
            let _ = ssrf::classify_ipv4(v4);
        }
    }
});
