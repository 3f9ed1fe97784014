//! The per-client cap on concurrent in-flight requests, and [`ConcurrencyCap`]: a total
//! and per-key cap whose permits live as long as a response body.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use crate::key::Key;

/// In-flight counters per key. An entry exists only while the key has requests in flight,
/// and there are at most `cap` entries: keys beyond it share one overflow counter with the
/// same limit.
#[derive(Debug)]
pub(crate) struct InFlight {
    map: DashMap<Key, u32>,
    limit: u32,
    entries: AtomicUsize,
    cap: usize,
    overflow: AtomicU32,
}

#[derive(Debug)]
enum Slot {
    Key(Key),
    Overflow,
}

/// Releases one in-flight slot when dropped.
#[derive(Debug)]
pub(crate) struct InFlightGuard {
    owner: Arc<InFlight>,
    slot: Option<Slot>,
}

impl InFlight {
    pub(crate) fn new(limit: u32, cap: usize) -> Self {
        Self {
            map: DashMap::new(),
            limit,
            entries: AtomicUsize::new(0),
            cap,
            overflow: AtomicU32::new(0),
        }
    }

    /// Takes a slot for `key`, or `None` when it already has `limit` requests in flight.
    pub(crate) fn acquire(self: &Arc<Self>, key: &Key) -> Option<InFlightGuard> {
        match self.map.entry(key.clone()) {
            Entry::Occupied(mut e) => {
                if *e.get() >= self.limit {
                    return None;
                }
                *e.get_mut() += 1;
            }
            Entry::Vacant(v) => {
                if self.entries.fetch_add(1, Ordering::AcqRel) >= self.cap {
                    self.entries.fetch_sub(1, Ordering::AcqRel);
                    drop(v);
                    let limit = self.limit;
                    return self
                        .overflow
                        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                            (n < limit).then_some(n + 1)
                        })
                        .ok()
                        .map(|_| InFlightGuard {
                            owner: self.clone(),
                            slot: Some(Slot::Overflow),
                        });
                }
                v.insert(1);
            }
        }
        Some(InFlightGuard {
            owner: self.clone(),
            slot: Some(Slot::Key(key.clone())),
        })
    }

    /// The slots `key` holds now.
    pub(crate) fn held(&self, key: &Key) -> u32 {
        self.map.get(key).map_or(0, |v| *v)
    }

    /// Keys with requests in flight.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        match self.slot.take() {
            Some(Slot::Key(k)) => {
                if let Entry::Occupied(mut e) = self.owner.map.entry(k) {
                    if *e.get() <= 1 {
                        e.remove();
                        self.owner.entries.fetch_sub(1, Ordering::AcqRel);
                    } else {
                        *e.get_mut() -= 1;
                    }
                }
            }
            Some(Slot::Overflow) => {
                self.owner.overflow.fetch_sub(1, Ordering::AcqRel);
            }
            None => {}
        }
    }
}

/// A cap on work in flight, in total and per key: for example the requests a proxy has
/// open towards one upstream (hence its connections to it), in total and per principal,
/// so that one principal (or one HTTP/2 connection of many streams) cannot take all of
/// them. A permit is released when dropped; [`InFlightBody::with_permit`] holds it until
/// a response body ends. Cheap to clone (the counters are shared).
///
/// Memory is bounded: a key holds an entry only while it holds permits, so there are at
/// most `total` entries. Keys longer than [`MAX_KEY_PART_LEN`](crate::MAX_KEY_PART_LEN)
/// bytes are replaced by their SHA-256.
///
/// ```
/// use mcp_ratelimit::{CapExceeded, ConcurrencyCap};
/// let cap = ConcurrencyCap::new(3, 2).unwrap();
/// let a1 = cap.try_acquire("apikey:a").unwrap();
/// let a2 = cap.try_acquire("apikey:a").unwrap();
/// assert_eq!(cap.try_acquire("apikey:a").unwrap_err(), CapExceeded::PerKey);
/// let b1 = cap.try_acquire("apikey:b").unwrap();
/// assert_eq!(cap.try_acquire("apikey:c").unwrap_err(), CapExceeded::Total);
/// drop(a1);
/// assert!(cap.try_acquire("apikey:c").is_ok());
/// # drop((a2, b1));
/// ```
///
/// [`InFlightBody::with_permit`]: crate::InFlightBody::with_permit
#[derive(Debug, Clone)]
pub struct ConcurrencyCap {
    total: Arc<InFlight>,
    per_key: Arc<InFlight>,
    limits: (u32, u32),
}

/// Why [`ConcurrencyCap::try_acquire`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapExceeded {
    /// Every permit of the cap is taken.
    Total,
    /// The key holds its share already.
    PerKey,
}

/// A permit of a [`ConcurrencyCap`], released when dropped (or when the
/// [`InFlightBody`](crate::InFlightBody) holding it ends).
#[derive(Debug)]
pub struct ConcurrencyPermit {
    guards: Vec<InFlightGuard>,
}

impl ConcurrencyPermit {
    pub(crate) fn into_guards(self) -> Vec<InFlightGuard> {
        self.guards
    }
}

impl ConcurrencyCap {
    /// A cap of `total` permits, at most `per_key` of them for one key. Both at least 1,
    /// `per_key` at most `total`; the error names `total` or `per_key`.
    pub fn new(total: u32, per_key: u32) -> Result<Self, crate::ConfigError> {
        if total == 0 {
            return Err(crate::ConfigError::OutOfRange {
                key: "total".into(),
                rule: "must be at least 1",
            });
        }
        if per_key == 0 || per_key > total {
            return Err(crate::ConfigError::OutOfRange {
                key: "per_key".into(),
                rule: "must be at least 1 and at most total",
            });
        }
        Ok(Self {
            total: Arc::new(InFlight::new(total, 1)),
            per_key: Arc::new(InFlight::new(per_key, total as usize)),
            limits: (total, per_key),
        })
    }

    /// Takes a permit for `key`, or says which cap is reached.
    pub fn try_acquire(&self, key: &str) -> Result<ConcurrencyPermit, CapExceeded> {
        let total = self.total.acquire(&Key::Global).ok_or(CapExceeded::Total)?;
        let k = text_key(key);
        // At most `total` keys hold permits, so the per-key map never overflows.
        let own = self.per_key.acquire(&k).ok_or(CapExceeded::PerKey)?;
        Ok(ConcurrencyPermit {
            guards: vec![own, total],
        })
    }

    /// Permits taken now, all keys together.
    pub fn in_use(&self) -> u32 {
        self.total.held(&Key::Global)
    }

    /// Permits `key` holds now.
    pub fn in_use_by(&self, key: &str) -> u32 {
        self.per_key.held(&text_key(key))
    }

    /// The configured (total, per key) caps.
    pub fn limits(&self) -> (u32, u32) {
        self.limits
    }
}

fn text_key(key: &str) -> Key {
    let mut s = String::with_capacity(key.len().min(80) + 4);
    crate::key::encode_part(&mut s, 'c', key);
    Key::Text(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn limit_then_release() {
        let f = Arc::new(InFlight::new(2, 10));
        let k = Key::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let a = f.acquire(&k).unwrap();
        let b = f.acquire(&k).unwrap();
        assert!(f.acquire(&k).is_none());
        assert!(f.acquire(&Key::Global).is_some());
        drop(a);
        let c = f.acquire(&k).unwrap();
        drop(b);
        drop(c);
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn entries_are_capped() {
        let f = Arc::new(InFlight::new(1, 2));
        let keys: Vec<Key> = (0..5u8)
            .map(|i| Key::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i))))
            .collect();
        let g0 = f.acquire(&keys[0]).unwrap();
        let g1 = f.acquire(&keys[1]).unwrap();
        // Beyond the cap: one shared overflow slot with the same limit.
        let g2 = f.acquire(&keys[2]).unwrap();
        assert!(f.acquire(&keys[3]).is_none());
        assert_eq!(f.len(), 2);
        drop((g0, g1, g2));
        assert_eq!(f.len(), 0);
        assert!(f.acquire(&keys[4]).is_some());
    }
}
