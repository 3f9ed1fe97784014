//! What a client sent as its server name (SNI), read from the bytes of its ClientHello.
//!
//! rustls ignores an SNI that is an IP address (TLS forbids it, RFC 6066 section 3) or
//! not a DNS name, and reports no server name: the same as no SNI at all. The accept
//! loop tells them apart here to count them, without logging each.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes of a connection's start kept: one TLS record header and the largest
/// record (2^14 bytes), which holds a ClientHello of any usual size.
const MAX_RECORDED: usize = 5 + (1 << 14);

/// The kind of server name in a ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SniKind {
    /// No server_name extension (or no host_name in it).
    Absent,
    /// A host name that is a valid DNS name.
    DnsName,
    /// An IP address literal, which TLS forbids as SNI.
    IpAddress,
    /// A host name that is neither a DNS name nor an IP address.
    Invalid,
    /// Not a readable ClientHello (truncated, fragmented over records, not TLS).
    Unreadable,
}

/// Reads the SNI of the ClientHello at the start of `bytes` (the first TLS record a
/// client sent). Never panics; bounded by the input.
pub(crate) fn sni_kind(bytes: &[u8]) -> SniKind {
    parse(bytes).unwrap_or(SniKind::Unreadable)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
    /// A vector with a one-byte length.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    /// A vector with a two-byte length.
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

fn parse(bytes: &[u8]) -> Option<SniKind> {
    let mut record = Reader(bytes);
    // TLSPlaintext: handshake (22), legacy version, length.
    if record.u8()? != 22 {
        return None;
    }
    record.take(2)?;
    let fragment = record.vec16()?;
    let mut hs = Reader(fragment);
    // Handshake: client_hello (1), length.
    if hs.u8()? != 1 {
        return None;
    }
    let len = hs.u24()?;
    let mut hello = Reader(hs.take(len)?);
    hello.take(2 + 32)?; // legacy_version, random
    hello.vec8()?; // legacy_session_id
    hello.vec16()?; // cipher_suites
    hello.vec8()?; // legacy_compression_methods
    if hello.0.is_empty() {
        return Some(SniKind::Absent);
    }
    let mut exts = Reader(hello.vec16()?);
    while !exts.0.is_empty() {
        let typ = exts.u16()?;
        let data = exts.vec16()?;
        if typ != 0 {
            continue;
        }
        // ServerNameList: entries of name_type (0: host_name) and a 16-bit name.
        let mut list = Reader(Reader(data).vec16()?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let name = list.vec16()?;
            if name_type == 0 {
                return Some(classify(name));
            }
        }
        return Some(SniKind::Absent);
    }
    Some(SniKind::Absent)
}

fn classify(name: &[u8]) -> SniKind {
    let Ok(text) = std::str::from_utf8(name) else {
        return SniKind::Invalid;
    };
    if text.parse::<IpAddr>().is_ok() {
        SniKind::IpAddress
    } else if rustls_pki_types::DnsName::try_from(text).is_ok() {
        SniKind::DnsName
    } else {
        SniKind::Invalid
    }
}

pin_project_lite::pin_project! {
    /// A stream that keeps a copy of the first bytes read from it (at most one TLS
    /// record) until [`take_recorded`](Self::take_recorded); then a plain pass-through.
    #[derive(Debug)]
    pub(crate) struct Recorded<IO> {
        #[pin]
        io: IO,
        recorded: Option<Vec<u8>>,
    }
}

impl<IO> Recorded<IO> {
    pub(crate) fn new(io: IO) -> Self {
        Self {
            io,
            recorded: Some(Vec::new()),
        }
    }

    /// The bytes recorded (empty after the first call); recording stops.
    pub(crate) fn take_recorded(&mut self) -> Vec<u8> {
        self.recorded.take().unwrap_or_default()
    }

    /// The wrapped stream.
    pub(crate) fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncRead> AsyncRead for Recorded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.io.poll_read(cx, buf);
        if let Some(rec) = this.recorded.as_mut() {
            let new = buf.filled().get(before..).unwrap_or_default();
            let room = MAX_RECORDED.saturating_sub(rec.len()).min(new.len());
            rec.extend_from_slice(&new[..room]);
        }
        r
    }
}

impl<IO: AsyncWrite> AsyncWrite for Recorded<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A ClientHello record with these extensions (type, data).
    fn hello(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        let mut ext = Vec::new();
        for (t, d) in exts {
            ext.extend_from_slice(&t.to_be_bytes());
            ext.extend_from_slice(&(d.len() as u16).to_be_bytes());
            ext.extend_from_slice(d);
        }
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![22, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    fn sni(name: &[u8]) -> (u16, Vec<u8>) {
        let mut entry = vec![0];
        entry.extend_from_slice(&(name.len() as u16).to_be_bytes());
        entry.extend_from_slice(name);
        let mut d = (entry.len() as u16).to_be_bytes().to_vec();
        d.extend_from_slice(&entry);
        (0, d)
    }

    #[test]
    fn kinds() {
        let alpn = (16, vec![0, 3, 2, b'h', b'2']);
        assert_eq!(sni_kind(&hello(&[])), SniKind::Absent);
        assert_eq!(
            sni_kind(&hello(std::slice::from_ref(&alpn))),
            SniKind::Absent
        );
        assert_eq!(
            sni_kind(&hello(&[alpn.clone(), sni(b"mcp.example.com")])),
            SniKind::DnsName
        );
        assert_eq!(sni_kind(&hello(&[sni(b"127.0.0.1")])), SniKind::IpAddress);
        assert_eq!(sni_kind(&hello(&[sni(b"::1")])), SniKind::IpAddress);
        assert_eq!(sni_kind(&hello(&[sni(b"a b")])), SniKind::Invalid);
        assert_eq!(sni_kind(&hello(&[sni(&[0xff, 0xfe])])), SniKind::Invalid);
        assert_eq!(sni_kind(b"GET / HTTP/1.1\r\n\r\n"), SniKind::Unreadable);
        assert_eq!(sni_kind(&[]), SniKind::Unreadable);
        let full = hello(&[sni(b"127.0.0.1")]);
        assert_eq!(sni_kind(&full[..full.len() - 3]), SniKind::Unreadable);
    }

    proptest! {
        /// Any bytes: an answer, no panic.
        #[test]
        fn any_bytes(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = sni_kind(&b);
        }

        /// Any name, among any other extensions: read back as its kind, or unreadable
        /// once cut short.
        #[test]
        fn names_among_extensions(
            name in proptest::collection::vec(any::<u8>(), 0..80),
            before in proptest::collection::vec((1u16..64, proptest::collection::vec(any::<u8>(), 0..20)), 0..4),
            cut in 0usize..400,
        ) {
            let mut exts = before;
            exts.push(sni(&name));
            let rec = hello(&exts);
            prop_assert_eq!(sni_kind(&rec), classify(&name));
            if cut > 0 && cut <= rec.len() {
                prop_assert_eq!(sni_kind(&rec[..rec.len() - cut]), SniKind::Unreadable);
            }
        }
    }
}
