//! The per-client cap on concurrent in-flight requests.

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
