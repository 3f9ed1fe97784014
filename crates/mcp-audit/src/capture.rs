//! What the request path copies out of a request for its event: the path and the header
//! values, as text.
//!
//! Keeping a clone of the request's `HeaderMap` and `Uri` instead costs two to four
//! allocations and, under hyper, one atomic reference-count update per header value on
//! the connection's read buffer, done again (on another core) when the writer drops the
//! event. Copying the text costs two allocations (the text, the entries) and two frees,
//! and the writer then needs no UTF-8 validation (BENCHMARKS.md, round 3).

use http::HeaderMap;

/// The path and headers of a request: the path, then the name and the value of each
/// header value (in the order of [`HeaderMap::iter`], so the values of a repeated header
/// follow each other in their order) in one `String`, and where each is. A value marked
/// sensitive, or not visible ASCII (not `HeaderValue::to_str`), is not copied: it is
/// rendered as the mask or `<binary>` whatever it holds.
#[derive(Clone, Default)]
pub(crate) struct RequestText {
    text: String,
    path_len: Option<usize>,
    headers: Option<Vec<Entry>>,
}

/// How a header value was captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Visible ASCII, copied.
    Text,
    /// Not visible ASCII: not copied.
    Binary,
    /// Marked sensitive (`HeaderValue::is_sensitive`): not copied.
    Sensitive,
}

/// Where one captured header value is in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The name's first 8 bytes, big-endian, zero-padded: ordering by this key, then by
    /// the name, is ordering by the name (names hold no zero byte).
    key: u64,
    name: (usize, usize),
    value: (usize, usize),
    kind: Kind,
}

/// One header value as captured.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct CapturedHeader<'a> {
    /// The (lowercase) name.
    pub(crate) name: &'a str,
    /// The value, when it is visible ASCII and not marked sensitive.
    pub(crate) value: Option<&'a str>,
    /// Whether the value was marked sensitive.
    pub(crate) sensitive: bool,
}

// Header values may be credentials: Debug shows names and lengths only.
impl std::fmt::Debug for RequestText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestText")
            .field("path_len", &self.path_len)
            .field("headers", &self.headers.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for CapturedHeader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapturedHeader")
            .field("name", &self.name)
            .field("value_len", &self.value.map(str::len))
            .field("sensitive", &self.sensitive)
            .finish()
    }
}

/// Whether `name` (lowercase) is one of [`crate::config::HASHED_HEADERS`].
pub(crate) fn is_hashed(name: &str) -> bool {
    crate::config::HASHED_HEADERS.contains(&name)
}

fn name_key(name: &[u8]) -> u64 {
    let mut k = [0u8; 8];
    for (slot, b) in k.iter_mut().zip(name) {
        *slot = *b;
    }
    u64::from_be_bytes(k)
}

impl RequestText {
    /// Copies `path` and `headers` (each when given).
    pub(crate) fn capture(path: Option<&str>, headers: Option<&HeaderMap>) -> Self {
        let mut size = path.map_or(0, str::len);
        if let Some(h) = headers {
            for (name, value) in h {
                size += name.as_str().len() + value.len();
            }
        }
        let mut text = String::with_capacity(size);
        if let Some(p) = path {
            text.push_str(p);
        }
        let headers = headers.map(|h| {
            let mut entries = Vec::with_capacity(h.len());
            for (name, value) in h {
                let start = text.len();
                text.push_str(name.as_str());
                let end = text.len();
                // A hashed header's value is copied even when marked sensitive: it is only
                // ever rendered as its hash.
                let kind = if value.is_sensitive() && !is_hashed(name.as_str()) {
                    Kind::Sensitive
                } else if let Ok(v) = value.to_str() {
                    text.push_str(v);
                    Kind::Text
                } else {
                    Kind::Binary
                };
                entries.push(Entry {
                    key: name_key(name.as_str().as_bytes()),
                    name: (start, end),
                    value: (end, text.len()),
                    kind,
                });
            }
            entries
        });
        Self {
            text,
            path_len: path.map(str::len),
            headers,
        }
    }

    /// The heap bytes this capture holds (its text and its entries), for the queue's
    /// byte budget.
    pub(crate) fn heap_size(&self) -> usize {
        self.text.capacity()
            + self
                .headers
                .as_ref()
                .map_or(0, |h| h.capacity() * std::mem::size_of::<Entry>())
    }

    /// The path, when captured.
    pub(crate) fn path(&self) -> Option<&str> {
        self.text.get(..self.path_len?)
    }

    /// Whether the headers were captured.
    pub(crate) fn has_headers(&self) -> bool {
        self.headers.is_some()
    }

    /// The header values, when captured.
    #[cfg(test)]
    pub(crate) fn headers(&self) -> Option<impl Iterator<Item = CapturedHeader<'_>>> {
        Some(self.headers.as_ref()?.iter().map(|e| self.header(*e)))
    }

    /// The captured header values, sorted by name into `order` (stable: the values of a
    /// repeated header keep their order).
    pub(crate) fn sorted_headers(&self, order: &mut Vec<Entry>) {
        order.clear();
        order.extend_from_slice(self.headers.as_deref().unwrap_or_default());
        order.sort_by(|a, b| {
            a.key
                .cmp(&b.key)
                .then_with(|| self.name(*a).cmp(self.name(*b)))
        });
    }

    /// The header value at `entry` (one of this capture's).
    pub(crate) fn header(&self, entry: Entry) -> CapturedHeader<'_> {
        CapturedHeader {
            name: self.name(entry),
            value: match entry.kind {
                Kind::Text => Some(
                    self.text
                        .get(entry.value.0..entry.value.1)
                        .unwrap_or_default(),
                ),
                Kind::Binary | Kind::Sensitive => None,
            },
            sensitive: entry.kind == Kind::Sensitive,
        }
    }

    /// The name at `entry`.
    pub(crate) fn name(&self, entry: Entry) -> &str {
        self.text
            .get(entry.name.0..entry.name.1)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};
    use proptest::prelude::*;

    fn same_as_map(path: Option<&str>, h: Option<&HeaderMap>) -> Result<(), TestCaseError> {
        let c = RequestText::capture(path, h);
        prop_assert_eq!(c.path(), path);
        match h {
            None => prop_assert!(c.headers().is_none()),
            Some(h) => {
                let got: Vec<CapturedHeader<'_>> = c.headers().unwrap().collect();
                let want: Vec<CapturedHeader<'_>> = h
                    .iter()
                    .map(|(n, v)| CapturedHeader {
                        name: n.as_str(),
                        value: v
                            .to_str()
                            .ok()
                            .filter(|_| !v.is_sensitive() || is_hashed(n.as_str())),
                        sensitive: v.is_sensitive() && !is_hashed(n.as_str()),
                    })
                    .collect();
                prop_assert_eq!(&got, &want);
                // Sorted by name, stable.
                let mut order = Vec::new();
                c.sorted_headers(&mut order);
                let sorted: Vec<CapturedHeader<'_>> = order.iter().map(|e| c.header(*e)).collect();
                let mut want = want;
                want.sort_by(|a, b| a.name.cmp(b.name));
                prop_assert_eq!(sorted, want);
            }
        }
        Ok(())
    }

    #[test]
    fn repeated_sensitive_long_and_binary_values() {
        let mut h = HeaderMap::new();
        h.append("cookie", HeaderValue::from_static("a=1"));
        h.insert(
            "x-long",
            HeaderValue::from_str(&"v".repeat(70_000)).unwrap(),
        );
        h.append("cookie", HeaderValue::from_static("b=2"));
        let mut s = HeaderValue::from_static("Bearer x");
        s.set_sensitive(true);
        h.insert("authorization", s);
        h.insert("x-bin", HeaderValue::from_bytes(b"\xff\xfe\t").unwrap());
        h.insert(
            HeaderName::from_bytes(&[b'a'; 300]).unwrap(),
            HeaderValue::from_static(""),
        );
        h.insert("accept", HeaderValue::from_static("x"));
        h.insert("accept-encoding", HeaderValue::from_static("y"));
        h.insert("acceptx", HeaderValue::from_static("z"));
        let c = RequestText::capture(Some("/mcp/x"), Some(&h));
        // Neither the sensitive nor the binary value is copied.
        assert!(!c.text.contains("Bearer") && !c.text.contains('\u{fffd}'));
        same_as_map(Some("/mcp/x"), Some(&h)).unwrap();
        same_as_map(None, Some(&h)).unwrap();
        same_as_map(Some(""), None).unwrap();
        same_as_map(None, None).unwrap();
        same_as_map(Some("/"), Some(&HeaderMap::new())).unwrap();
    }

    #[test]
    fn debug_shows_no_value() {
        let mut h = HeaderMap::new();
        h.insert("x-token", HeaderValue::from_static("s3cr3t-value"));
        let c = RequestText::capture(Some("/mcp"), Some(&h));
        let shown = format!("{c:?} {:?}", c.headers().unwrap().collect::<Vec<_>>());
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    proptest! {
        #[test]
        fn capture_gives_back_the_map_in_its_order(
            entries in prop::collection::vec(
                (
                    prop_oneof!["[a-z][a-z0-9-]{0,12}", prop::sample::select(vec![
                        "accept", "accept-encoding", "acceptenc", "a", "ab", "abcdefgh", "abcdefghi",
                        "abcdefgh-", "x-api-key", "x-api-keys",
                    ]).prop_map(str::to_owned)],
                    prop::collection::vec(any::<u8>(), 0..40),
                    any::<bool>(),
                    any::<bool>(),
                ),
                0..12,
            ),
            path in prop::option::of("/[a-zA-Z0-9/._~%-]{0,30}"),
        ) {
            let mut h = HeaderMap::new();
            for (name, value, sensitive, append) in entries {
                let Ok(mut v) = HeaderValue::from_bytes(&value) else { continue };
                v.set_sensitive(sensitive);
                let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
                if append { h.append(name, v); } else { h.insert(name, v); }
            }
            same_as_map(path.as_deref(), Some(&h))?;
        }
    }
}
