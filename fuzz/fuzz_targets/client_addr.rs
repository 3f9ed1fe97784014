//! `Forwarded` / `X-Forwarded-For` / `X-Real-IP` resolution (`TrustedProxies::resolve`).
//!
//! Input: one control byte (which header), then what the client sent in that header.
//! A trusted proxy (10.0.0.1) appends the client's real address (from the input's last 4
//! bytes, made public) the way nginx, HAProxy and Envoy do: to the same header value
//! after `, ` and, in a second request, as a header line of its own.
//! Properties: no panic; whatever the client wrote, the resolved address is the one the
//! trusted proxy appended (the client cannot choose it, hide behind the proxy's address,
//! or swallow the appended entry); an untrusted peer's headers are ignored; deterministic.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::LazyLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use mcp_core::{ForwardedHeader, TrustedProxies};

static PROXIES: LazyLock<[TrustedProxies; 3]> = LazyLock::new(|| {
    let nets = [
        "10.0.0.0/8".parse().expect("net"),
        "::1/128".parse().expect("net"),
    ];
    [
        TrustedProxies::new(nets.clone()),
        TrustedProxies::new(nets.clone()).with_header(ForwardedHeader::Forwarded),
        TrustedProxies::new(nets).with_header(ForwardedHeader::XRealIp),
    ]
});

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let (client_part, addr) = rest.split_at(rest.len().saturating_sub(4));
    let mut a = [198, 51, 100, 7];
    a[..addr.len()].copy_from_slice(addr);
    // A public address (not in the trusted 10/8).
    if a[0] == 10 || a[0] == 0 || a[0] == 127 {
        a[0] = 198;
    }
    let real = IpAddr::V4(Ipv4Addr::from(a));
    let which = usize::from(ctl % 3);
    let proxies = &PROXIES[which];
    let name = match which {
        0 => HeaderName::from_static("x-forwarded-for"),
        1 => http::header::FORWARDED,
        _ => HeaderName::from_static("x-real-ip"),
    };
    let Ok(client_value) = HeaderValue::from_bytes(client_part) else {
        return;
    };
    let proxy: SocketAddr = "10.0.0.1:40000".parse().expect("addr");
    let stranger: SocketAddr = "203.0.113.9:40000".parse().expect("addr");

    // The client's header alone, from an untrusted peer: ignored.
    let mut alone = HeaderMap::new();
    alone.append(name.clone(), client_value.clone());
    assert_eq!(proxies.resolve(stranger, &alone).ip(), stranger.ip());
    let r = proxies.resolve(proxy, &alone);
    assert_eq!(r, proxies.resolve(proxy, &alone), "not deterministic");
    assert_eq!(r.peer(), proxy);

    let appended_entry = match which {
        0 => real.to_string(),
        1 => format!("for={real}"),
        _ => return, // X-Real-IP is set, not appended: a second value is refused.
    };
    // The proxy appends to the client's value (nginx $proxy_add_x_forwarded_for).
    let joined = if client_part.is_empty() {
        appended_entry.clone()
    } else {
        format!("{}, {appended_entry}", String::from_utf8_lossy(client_part))
    };
    if client_part.is_ascii()
        && let Ok(v) = HeaderValue::from_str(&joined)
    {
        let mut h = HeaderMap::new();
        h.append(name.clone(), v);
        assert_eq!(
            proxies.resolve(proxy, &h).ip(),
            real,
            "client sent {:?}; proxy appended {appended_entry}",
            String::from_utf8_lossy(client_part)
        );
    }
    // The proxy adds a header line of its own.
    let mut h = HeaderMap::new();
    h.append(name.clone(), client_value);
    h.append(name, HeaderValue::from_str(&appended_entry).expect("valid"));
    assert_eq!(
        proxies.resolve(proxy, &h).ip(),
        real,
        "client sent {:?} in its own line; proxy added {appended_entry}",
        String::from_utf8_lossy(client_part)
    );
});
