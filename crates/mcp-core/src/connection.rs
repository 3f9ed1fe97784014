//! What a server tells the layers about its connections: why it closed one while a
//! response was being sent ([`ConnectionEvents`], in each request's extensions), and the
//! connections it refused before any request ([`ConnectionObserver`]).
//!
//! A server that enforces connection limits (mcp-tls's accept loop) puts a
//! [`ConnectionEvents`] of the connection into every request's extensions, notes when
//! everything the connection was handed has been written ([`ConnectionEvents::flushed`])
//! and why it closed the connection ([`ConnectionEvents::close`]). An audit layer reads
//! it: a response whose body ended in the server's buffers is only delivered once the
//! connection wrote it ([`ConnectionEvents::when_written`]), and a response cut by a
//! write timeout is recorded as cut, not served. Under another server there is no
//! `ConnectionEvents` in the extensions and nothing changes.
//!
//! ```
//! use mcp_core::{CloseReason, ConnectionEvents};
//!
//! let events = ConnectionEvents::new();
//! // An audit layer, at the end of a response body:
//! let pending = events.when_written(Box::new(|closed| {
//!     assert_eq!(closed, Some(CloseReason::WriteTimeout));
//! }));
//! assert!(pending.is_ok());
//! // The server, when no write progress was made for the write timeout:
//! events.close(Some(CloseReason::WriteTimeout));
//! assert_eq!(events.closed(), Some(CloseReason::WriteTimeout));
//! ```

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Why a server closed a connection while a response could still be in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// A response waited the write timeout with no write progress (the client stopped
    /// reading), or the connection did not finish within it when asked to close.
    WriteTimeout,
    /// The client certificate that authenticated the connection reached its end of
    /// validity, and the connection had not finished within the write timeout after it.
    CertificateExpired,
    /// A reload of the client trust (CRL, CA) refused the client certificate chain that
    /// authenticated the connection, and the connection had not finished within the write
    /// timeout after it.
    CertificateRefused,
}

impl CloseReason {
    /// The stable snake_case name (`write_timeout`), as recorded in audit rows.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::WriteTimeout => "write_timeout",
            Self::CertificateExpired => "certificate_expired",
            Self::CertificateRefused => "certificate_refused",
        }
    }

    /// A safe, fixed description for audit rows.
    pub const fn detail(self) -> &'static str {
        match self {
            Self::WriteTimeout => {
                "response cut: the connection was closed after no write progress for the write timeout"
            }
            Self::CertificateExpired => {
                "response cut: the connection was closed after its client certificate expired"
            }
            Self::CertificateRefused => {
                "response cut: the connection was closed after a reload of the client trust refused its certificate"
            }
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::WriteTimeout => 1,
            Self::CertificateExpired => 2,
            Self::CertificateRefused => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::WriteTimeout),
            2 => Some(Self::CertificateExpired),
            3 => Some(Self::CertificateRefused),
            _ => None,
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Called once a response handed to the connection is written (`None`), or the
/// connection closed first (`Some(reason)` when the server closed it for a
/// [`CloseReason`], `None` when it simply ended).
pub type OnWritten = Box<dyn FnOnce(Option<CloseReason>) + Send>;

/// Most callbacks one connection holds (responses ended and not yet written); beyond,
/// [`ConnectionEvents::when_written`] hands the callback back.
pub const MAX_PENDING_WRITES: usize = 256;

/// What a server notes about one connection, shared by every request on it (cheap to
/// clone: an `Arc`). See the [module documentation](self).
#[derive(Clone, Default)]
pub struct ConnectionEvents(Arc<Inner>);

#[derive(Default)]
struct Inner {
    /// 0: open; else the [`CloseReason`] code; `ENDED` once closed without one.
    closed: AtomicU8,
    /// Whether `pending` may hold callbacks (read without the lock).
    waiting: AtomicBool,
    pending: Mutex<Vec<OnWritten>>,
}

const ENDED: u8 = u8::MAX;

impl Drop for Inner {
    /// The connection is gone without a [`ConnectionEvents::close`] (its task was
    /// dropped, at a runtime's shutdown): the callbacks still run, with the reason noted.
    fn drop(&mut self) {
        let reason = CloseReason::from_code(*self.closed.get_mut());
        let pending = std::mem::take(
            self.pending
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for then in pending {
            then(reason);
        }
    }
}

impl fmt::Debug for ConnectionEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionEvents")
            .field("closed", &self.closed())
            .field("ended", &self.is_ended())
            .finish_non_exhaustive()
    }
}

impl ConnectionEvents {
    /// The events of a new, open connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Why the server closed the connection, once it did for a [`CloseReason`].
    pub fn closed(&self) -> Option<CloseReason> {
        CloseReason::from_code(self.0.closed.load(Ordering::Acquire))
    }

    /// Whether the connection has ended (closed for a reason or not).
    pub fn is_ended(&self) -> bool {
        self.0.closed.load(Ordering::Acquire) != 0
    }

    /// Layer side: runs `then` once everything the connection has been handed so far is
    /// written, or it closes. Call it when a response body has been handed over whole
    /// (it may still wait in the server's buffers). `Err(then)` when the connection has
    /// ended already or holds [`MAX_PENDING_WRITES`] callbacks: the caller decides (with
    /// [`closed`](Self::closed)).
    pub fn when_written(&self, then: OnWritten) -> Result<(), OnWritten> {
        if self.is_ended() {
            return Err(then);
        }
        let mut pending = self
            .0
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Checked again under the lock: `close` empties the list under it.
        if self.is_ended() || pending.len() >= MAX_PENDING_WRITES {
            return Err(then);
        }
        pending.push(then);
        self.0.waiting.store(true, Ordering::Release);
        Ok(())
    }

    /// Server side: everything handed to the connection so far has been written (a
    /// flush completed). Runs the callbacks waiting for it, outside the lock.
    pub fn flushed(&self) {
        if !self.0.waiting.load(Ordering::Acquire) {
            return;
        }
        for then in self.take() {
            then(None);
        }
    }

    /// Server side: the connection is closing, for `reason` when the server closes it
    /// for one (the first reason given is kept). Runs the callbacks still waiting with
    /// it. Call it before dropping the connection, so that a response body dropped with
    /// it finds the reason in [`closed`](Self::closed).
    pub fn close(&self, reason: Option<CloseReason>) {
        let code = reason.map_or(ENDED, CloseReason::code);
        let _ = self
            .0
            .closed
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        let reason = self.closed();
        for then in self.take() {
            then(reason);
        }
    }

    fn take(&self) -> Vec<OnWritten> {
        let mut pending = self
            .0
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.0.waiting.store(false, Ordering::Release);
        std::mem::take(&mut *pending)
    }
}

/// Why a server refused a connection before reading any request on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalReason {
    /// Its client address had the most connections allowed open already.
    TooManyConnections,
}

impl RefusalReason {
    /// The stable snake_case name (`too_many_connections`), as recorded in audit rows.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TooManyConnections => "too_many_connections",
        }
    }

    /// A safe, fixed description for audit rows.
    pub const fn detail(self) -> &'static str {
        match self {
            Self::TooManyConnections => {
                "connections refused at accept: the client address had the most connections allowed open"
            }
        }
    }
}

/// A connection the server refused (see [`ConnectionObserver`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionRefusal {
    /// The client, as the limit counts it: the peer's address, IPv6 by its network
    /// ([`crate::ip_key`]).
    pub client: IpAddr,
    /// Why.
    pub reason: RefusalReason,
    /// The limit that was reached.
    pub limit: usize,
}

impl ConnectionRefusal {
    /// A refusal of a connection from `client` for `reason`, at `limit`.
    pub fn new(client: IpAddr, reason: RefusalReason, limit: usize) -> Self {
        Self {
            client,
            reason,
            limit,
        }
    }
}

/// Told by a server of every connection it refuses before reading a request (an audit
/// trail implements it). Called on the accept path: it must not block, and it must
/// bound what it keeps, since a client controls how often it is called.
pub trait ConnectionObserver: Send + Sync + 'static {
    /// A connection was refused.
    fn refused(&self, refusal: ConnectionRefusal);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn counter(seen: &Arc<Mutex<Vec<Option<CloseReason>>>>) -> OnWritten {
        let seen = seen.clone();
        Box::new(move |r| seen.lock().unwrap().push(r))
    }

    #[test]
    fn callbacks_run_once_at_the_flush_or_the_close() {
        let seen = Arc::default();
        let e = ConnectionEvents::new();
        e.flushed();
        assert!(e.when_written(counter(&seen)).is_ok());
        e.flushed();
        e.flushed();
        assert_eq!(*seen.lock().unwrap(), vec![None]);
        assert!(e.when_written(counter(&seen)).is_ok());
        assert!(e.clone().when_written(counter(&seen)).is_ok());
        e.close(Some(CloseReason::WriteTimeout));
        let want = vec![
            None,
            Some(CloseReason::WriteTimeout),
            Some(CloseReason::WriteTimeout),
        ];
        assert_eq!(*seen.lock().unwrap(), want);
        // Closed: handed back, and the first reason stays.
        assert!(e.when_written(counter(&seen)).is_err());
        e.close(None);
        assert_eq!(e.closed(), Some(CloseReason::WriteTimeout));
        assert!(e.is_ended());
    }

    #[test]
    fn a_plain_end_has_no_reason_and_the_list_is_bounded() {
        let e = ConnectionEvents::new();
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..MAX_PENDING_WRITES {
            let ran = ran.clone();
            let ok = e.when_written(Box::new(move |r| {
                assert_eq!(r, None);
                ran.fetch_add(1, Ordering::Relaxed);
            }));
            assert!(ok.is_ok());
        }
        assert!(e.when_written(Box::new(|_| {})).is_err());
        e.close(None);
        assert_eq!(ran.load(Ordering::Relaxed), MAX_PENDING_WRITES);
        // Dropped without a close: still run.
        let dropped = ConnectionEvents::new();
        let r2 = ran.clone();
        assert!(
            dropped
                .when_written(Box::new(move |_| {
                    r2.fetch_add(1, Ordering::Relaxed);
                }))
                .is_ok()
        );
        drop(dropped);
        assert_eq!(ran.load(Ordering::Relaxed), MAX_PENDING_WRITES + 1);
        assert_eq!(e.closed(), None);
        assert!(e.is_ended());
        assert_eq!(CloseReason::WriteTimeout.as_str(), "write_timeout");
        for r in [
            CloseReason::WriteTimeout,
            CloseReason::CertificateExpired,
            CloseReason::CertificateRefused,
        ] {
            assert_eq!(CloseReason::from_code(r.code()), Some(r));
        }
        assert_eq!(
            RefusalReason::TooManyConnections.as_str(),
            "too_many_connections"
        );
    }
}
