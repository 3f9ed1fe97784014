//! Tamper evidence: a SHA-256 hash chain over the stored records, and its verification.
//!
//! Each record has a sequence number `seq` (1, 2, 3, ... without gaps), the hash of the
//! record before it (`prev_hash`; 64 zeros before the first record) and its own hash:
//!
//! ```text
//! hash = hex(SHA-256( prev_hash || "\n" || seq || "\n" || event_json ))
//! ```
//!
//! where `event_json` is the canonical JSON of the [`crate::AuditRecord`] exactly as
//! stored (the bytes are hashed, never a re-serialization). [`verify_rows`] walks the
//! records in `seq` order and reports the first one that was deleted, inserted or altered
//! ([`Tampering`]); the stored index columns (user, tool, ...) are checked against the JSON
//! too, so editing a column alone is found.
//!
//! **Retention.** Pruning (`maxRecords`, file rotation) deletes the oldest records. Before
//! it does, the `seq` and hash of the last pruned record are stored as the chain's
//! *anchor*; verification then starts from the anchor, so a record deleted at the start
//! of what is kept is still found.
//!
//! **Limits.** A chain without a secret cannot tell a truncated tail from a trail that
//! simply ended, nor stop someone with write access from rewriting the whole chain from
//! some point on. Ship the `hash` of recent records elsewhere (the stdout / tracing sinks
//! write them, so a log shipper keeps an independent copy of the chain heads) and compare.

use std::borrow::Cow;
use std::fmt;

use sha2::{Digest, Sha256};

use crate::event::{AuditRecord, IndexColumns};

/// The `prev_hash` of the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Computes a record's hash.
pub fn record_hash(prev_hash: &str, seq: i64, json: &str) -> String {
    record_hash_hex(prev_hash, seq, json).as_str().to_owned()
}

/// A record hash as 64 lowercase hex digits, on the stack.
#[derive(Clone, Copy)]
pub(crate) struct HashHex([u8; 64]);

impl HashHex {
    /// The hex digits.
    pub(crate) fn as_str(&self) -> &str {
        // Hex digits are ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// [`record_hash`] without allocating: the sequence number is formatted and the digest
/// hex-encoded into stack buffers.
pub(crate) fn record_hash_hex(prev_hash: &str, seq: i64, json: &str) -> HashHex {
    use std::io::Write;
    let mut digits = [0u8; 20];
    let mut w = &mut digits[..];
    // An i64 has at most 20 characters: the write cannot fail.
    let _ = write!(w, "{seq}");
    let len = 20 - w.len();
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(&digits[..len]);
    h.update(b"\n");
    h.update(json.as_bytes());
    let mut out = HashHex([b'0'; 64]);
    // 32 bytes always fit 64 hex digits.
    let _ = hex::encode_to_slice(h.finalize(), &mut out.0);
    out
}

/// The head of a chain: the last `seq` and hash written (or the anchor, or genesis).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// The last sequence number (0 before the first record).
    pub seq: i64,
    /// Its hash ([`GENESIS`] before the first record).
    pub hash: String,
}

impl Default for ChainHead {
    fn default() -> Self {
        Self {
            seq: 0,
            hash: GENESIS.to_owned(),
        }
    }
}

impl ChainHead {
    /// Advances the head past a record whose hash was computed by the caller (no
    /// allocation once the head holds a 64-digit hash).
    #[cfg(feature = "sqlite")]
    pub(crate) fn advance(&mut self, seq: i64, hash: &HashHex) {
        self.seq = seq;
        self.hash.clear();
        self.hash.push_str(hash.as_str());
    }

    /// Appends a record: returns `(seq, prev_hash, hash)` and advances the head.
    pub fn append(&mut self, json: &str) -> (i64, String, String) {
        let seq = self.seq + 1;
        let prev = std::mem::take(&mut self.hash);
        let hash = record_hash(&prev, seq, json);
        self.seq = seq;
        self.hash.clone_from(&hash);
        (seq, prev, hash)
    }
}

/// A stored record as read back for verification.
#[derive(Debug, Clone)]
pub struct ChainRow {
    /// Sequence number.
    pub seq: i64,
    /// Stored previous hash.
    pub prev_hash: String,
    /// Stored hash.
    pub hash: String,
    /// Stored event JSON.
    pub json: String,
    /// Stored index columns, when the storage has them.
    pub columns: Option<IndexColumns>,
}

/// The first inconsistency found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tampering {
    /// Records `first..=last` are missing before the record `next`.
    Deleted {
        /// First missing sequence number.
        first: i64,
        /// Last missing sequence number.
        last: i64,
        /// The record found after the gap.
        next: i64,
    },
    /// The record at `seq` was inserted (it is not part of the chain: the record after it
    /// links to the one before it).
    Inserted {
        /// Sequence number of the inserted record.
        seq: i64,
    },
    /// The record at `seq` was altered (its content, its sequence number, its columns, or
    /// its hash).
    Altered {
        /// Sequence number of the altered record.
        seq: i64,
    },
    /// The first record kept does not link to the stored anchor (or to genesis).
    AnchorMismatch {
        /// Sequence number of the first record.
        seq: i64,
    },
    /// A stored line or row could not be read as a record.
    Malformed {
        /// Where (file and line, or row).
        location: String,
    },
}

impl fmt::Display for Tampering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Deleted { first, last, next } => {
                write!(f, "records {first}..={last} deleted (before record {next})")
            }
            Self::Inserted { seq } => write!(f, "record {seq} was inserted"),
            Self::Altered { seq } => write!(f, "record {seq} was altered"),
            Self::AnchorMismatch { seq } => {
                write!(f, "first record {seq} does not link to the chain anchor")
            }
            Self::Malformed { location } => write!(f, "unreadable record at {location}"),
        }
    }
}

/// The result of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// The anchor the chain started from (after pruning), if any.
    pub anchor: Option<ChainHead>,
    /// The last record checked (seq and hash): compare it with an independent copy to
    /// detect a truncated tail.
    pub head: ChainHead,
    /// The first problem found, or `None` when the chain is intact.
    pub problem: Option<Tampering>,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_intact(&self) -> bool {
        self.problem.is_none()
    }
}

/// Incremental verifier (rows are fed in `seq` order).
#[derive(Debug)]
pub struct Verifier {
    anchor: Option<ChainHead>,
    expected_prev: String,
    expected_seq: i64,
    prev2: Option<String>,
    prev_seq: Option<i64>,
    records: u64,
    problem: Option<Tampering>,
}

impl Verifier {
    /// Starts from an anchor (after pruning) or from genesis.
    pub fn new(anchor: Option<ChainHead>) -> Self {
        let start = anchor.clone().unwrap_or_default();
        Self {
            anchor,
            expected_prev: start.hash,
            expected_seq: start.seq + 1,
            prev2: None,
            prev_seq: None,
            records: 0,
            problem: None,
        }
    }

    /// Whether a problem was already found (further rows are ignored).
    pub fn failed(&self) -> bool {
        self.problem.is_some()
    }

    /// Records a problem found by the caller (an unreadable row).
    pub fn fail(&mut self, t: Tampering) {
        if self.problem.is_none() {
            self.problem = Some(t);
        }
    }

    /// Checks the next row.
    pub fn push(&mut self, row: &ChainRow) {
        if self.problem.is_some() {
            return;
        }
        self.records += 1;
        let self_ok = record_hash(&row.prev_hash, row.seq, &row.json) == row.hash;
        if row.prev_hash != self.expected_prev {
            let t = if self.prev2.as_deref() == Some(row.prev_hash.as_str()) {
                Tampering::Inserted {
                    seq: self.prev_seq.unwrap_or(row.seq),
                }
            } else if row.seq > self.expected_seq {
                Tampering::Deleted {
                    first: self.expected_seq,
                    last: row.seq - 1,
                    next: row.seq,
                }
            } else if !self_ok {
                Tampering::Altered { seq: row.seq }
            } else {
                match self.prev_seq {
                    // The previous record was rewritten with a fresh hash.
                    Some(p) => Tampering::Altered { seq: p },
                    None => Tampering::AnchorMismatch { seq: row.seq },
                }
            };
            self.problem = Some(t);
            return;
        }
        if !self_ok || row.seq != self.expected_seq {
            self.problem = Some(Tampering::Altered { seq: row.seq });
            return;
        }
        if let Some(cols) = &row.columns {
            let ok = serde_json::from_str::<AuditRecord>(&row.json)
                .map(|r| {
                    let derived = IndexColumns::of(&r);
                    // Trails written before display controls were escaped in the
                    // columns hold them raw, and trails written before C0 controls,
                    // DEL and the invisible format characters were hold those raw:
                    // the same text, spelled otherwise.
                    let ts_us = derived.ts_us;
                    let reason = r.reason.clone();
                    derived == *cols
                        || IndexColumns {
                            reason: reason.clone(),
                            ..IndexColumns::spelled(
                                &r,
                                ts_us,
                                crate::mask::escape_display_controls_v1,
                            )
                        } == *cols
                        || IndexColumns {
                            reason,
                            ..IndexColumns::spelled(&r, ts_us, |s| Cow::Borrowed(s))
                        } == *cols
                })
                .unwrap_or(false);
            if !ok {
                self.problem = Some(Tampering::Altered { seq: row.seq });
                return;
            }
        }
        self.prev2 = Some(std::mem::replace(&mut self.expected_prev, row.hash.clone()));
        self.prev_seq = Some(row.seq);
        self.expected_seq = row.seq + 1;
    }

    /// The report.
    pub fn finish(self) -> VerifyReport {
        VerifyReport {
            records: self.records,
            head: ChainHead {
                seq: self.expected_seq - 1,
                hash: self.expected_prev,
            },
            anchor: self.anchor,
            problem: self.problem,
        }
    }
}

/// Verifies rows given in `seq` order, starting from `anchor` (or genesis).
pub fn verify_rows<I: IntoIterator<Item = ChainRow>>(
    anchor: Option<ChainHead>,
    rows: I,
) -> VerifyReport {
    let mut v = Verifier::new(anchor);
    for r in rows {
        v.push(&r);
        if v.failed() {
            break;
        }
    }
    v.finish()
}

/// Verifies every verifiable storage of a configuration (the database and the JSON lines
/// files): what the gateway's `verify` command runs. Returns one report per storage, named
/// `sqlite`, `postgres` or `file`.
///
/// ```no_run
/// # async fn f() {
/// let cfg = mcp_audit::AuditConfig::default();
/// for (storage, report) in mcp_audit::chain::verify_configured(&cfg).await.unwrap() {
///     match &report.problem {
///         None => println!("{storage}: {} records intact, head {}", report.records, report.head.hash),
///         Some(t) => println!("{storage}: {t}"),
///     }
/// }
/// # }
/// ```
pub async fn verify_configured(
    cfg: &crate::AuditConfig,
) -> Result<Vec<(&'static str, VerifyReport)>, crate::AuditError> {
    use crate::config::{DatabaseType, Storage};
    let fail =
        |storage: &'static str, message: String| crate::AuditError::Open { storage, message };
    let mut out = Vec::new();
    for s in cfg.storage.to_vec() {
        match s {
            Storage::File => {
                let path = cfg.file.path.clone();
                let r = tokio::task::spawn_blocking(move || crate::sink::file::verify_jsonl(path))
                    .await
                    .map_err(|_| fail("file", "verify task failed".into()))?
                    .map_err(|e| fail("file", e.kind().to_string()))?;
                out.push(("file", r));
            }
            Storage::Database => match cfg.database.kind {
                DatabaseType::Sqlite => {
                    #[cfg(feature = "sqlite")]
                    {
                        let path = cfg.database.sqlite_path.clone();
                        let r = tokio::task::spawn_blocking(move || {
                            crate::sink::sqlite::verify_sqlite(path)
                        })
                        .await
                        .map_err(|_| fail("sqlite", "verify task failed".into()))?
                        .map_err(|e| fail("sqlite", e.to_string()))?;
                        out.push(("sqlite", r));
                    }
                }
                DatabaseType::Postgres => {
                    #[cfg(feature = "postgres")]
                    {
                        let url = cfg
                            .database
                            .postgres_url
                            .as_ref()
                            .map(|u| u.0.clone())
                            .unwrap_or_default();
                        let client = crate::sink::postgres::connect(&url)
                            .await
                            .map_err(|e| fail("postgres", e.to_string()))?;
                        let r = crate::sink::postgres::verify_postgres(&client)
                            .await
                            .map_err(|e| fail("postgres", e.to_string()))?;
                        out.push(("postgres", r));
                    }
                }
            },
            Storage::Stdout | Storage::Tracing => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<ChainRow> {
        let mut head = ChainHead::default();
        (0..n)
            .map(|i| {
                let json = format!("{{\"event_id\":\"{i}\",\"timestamp\":\"x\"}}");
                let (seq, prev_hash, hash) = head.append(&json);
                ChainRow {
                    seq,
                    prev_hash,
                    hash,
                    json,
                    columns: None,
                }
            })
            .collect()
    }

    #[test]
    fn record_hash_is_sha256_of_prev_seq_and_json() {
        for (prev, seq, json) in [
            (GENESIS, 1, "{}"),
            ("abc", i64::MAX, "{\"a\":1}"),
            ("", i64::MIN, ""),
            ("f00", 0, "x\ny"),
        ] {
            let mut h = Sha256::new();
            h.update(format!("{prev}\n{seq}\n{json}").as_bytes());
            assert_eq!(record_hash(prev, seq, json), hex::encode(h.finalize()));
        }
    }

    #[test]
    fn intact_chain() {
        let r = verify_rows(None, chain(5));
        assert!(r.is_intact());
        assert_eq!(r.records, 5);
        assert_eq!(r.head.seq, 5);
        assert!(verify_rows(None, Vec::new()).is_intact());
    }

    #[test]
    fn deleted_in_middle_and_at_start() {
        let mut c = chain(6);
        c.remove(2);
        assert_eq!(
            verify_rows(None, c).problem,
            Some(Tampering::Deleted {
                first: 3,
                last: 3,
                next: 4
            })
        );
        let mut c = chain(6);
        c.drain(0..2);
        assert_eq!(
            verify_rows(None, c).problem,
            Some(Tampering::Deleted {
                first: 1,
                last: 2,
                next: 3
            })
        );
    }

    #[test]
    fn altered_content_hash_or_seq() {
        let mut c = chain(4);
        c[1].json = c[1].json.replace("\"1\"", "\"9\"");
        assert_eq!(
            verify_rows(None, c).problem,
            Some(Tampering::Altered { seq: 2 })
        );
        // Rewritten with a fresh, valid hash: the next record no longer links to it.
        let mut c = chain(4);
        c[1].json.push(' ');
        c[1].hash = record_hash(&c[1].prev_hash, 2, &c[1].json);
        assert_eq!(
            verify_rows(None, c).problem,
            Some(Tampering::Altered { seq: 2 })
        );
    }

    #[test]
    fn inserted_with_renumbering() {
        let c = chain(4);
        // Insert X after record 2, with a valid hash, and shift 3 and 4 up by one.
        let x_json = "{\"evil\":true}".to_owned();
        let x = ChainRow {
            seq: 3,
            prev_hash: c[1].hash.clone(),
            hash: record_hash(&c[1].hash, 3, &x_json),
            json: x_json,
            columns: None,
        };
        let mut rows = vec![c[0].clone(), c[1].clone(), x];
        for r in &c[2..] {
            let mut r = r.clone();
            r.seq += 1;
            rows.push(r);
        }
        assert_eq!(
            verify_rows(None, rows).problem,
            Some(Tampering::Inserted { seq: 3 })
        );
    }

    #[test]
    fn anchor_after_pruning() {
        let c = chain(6);
        let anchor = ChainHead {
            seq: 2,
            hash: c[1].hash.clone(),
        };
        assert!(verify_rows(Some(anchor.clone()), c[2..].to_vec()).is_intact());
        assert_eq!(
            verify_rows(Some(anchor), c[3..].to_vec()).problem,
            Some(Tampering::Deleted {
                first: 3,
                last: 3,
                next: 4
            })
        );
        // Without the anchor, a pruned trail does not verify from genesis.
        assert!(!verify_rows(None, c[2..].to_vec()).is_intact());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_single_tampering_is_found(
                n in 2i64..40,
                pick in any::<prop::sample::Index>(),
                op in 0u8..4,
            ) {
                let rows = chain(n);
                let i = pick.index(rows.len());
                let mut t = rows.clone();
                match op {
                    0 => { t.remove(i); }
                    1 => t[i].json.push('x'),
                    2 => t[i].hash = record_hash("f00", 1, "x"),
                    _ => t[i].seq += 7,
                }
                let r = verify_rows(None, t);
                // Removing the last record is the one change a bare chain cannot see.
                if !(op == 0 && i == rows.len() - 1) {
                    prop_assert!(r.problem.is_some(), "op {} at {} not found", op, i);
                } else {
                    prop_assert_eq!(r.head.seq, n - 1);
                }
            }

            #[test]
            fn verify_never_panics_on_garbage(
                rows in prop::collection::vec(
                    (any::<i64>(), "[0-9a-f]{0,64}", "[0-9a-f]{0,64}", "\\PC{0,40}"), 0..20),
            ) {
                let rows = rows.into_iter().map(|(seq, prev_hash, hash, json)| ChainRow {
                    seq, prev_hash, hash, json, columns: Some(IndexColumns::default()),
                });
                let _ = verify_rows(None, rows);
            }
        }
    }
}
