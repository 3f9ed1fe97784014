//! JSON lines files with size-based rotation and retention.
//!
//! The active file is `<path>`; when a batch would grow it beyond `max_bytes`, it is
//! renamed `<path>.1`, the older ones shift (`.1` → `.2`, ...), and the one beyond
//! `keep_files` is deleted. Before a file is deleted, the `seq` and hash of its last
//! record are written to `<path>.anchor` (atomically, through a temporary file and a
//! rename), so [`verify_jsonl`] still detects a record removed from what is kept.
//!
//! A failed batch is undone (the file is truncated back to where it was), so retrying
//! never duplicates lines.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::chain::{ChainHead, ChainRow, Tampering, Verifier, VerifyReport};
use crate::event::SinkEvent;
use crate::sink::{AuditSink, BoxFuture, Line, SinkError, format_line};

struct State {
    path: PathBuf,
    file: File,
    len: u64,
    head: ChainHead,
    max_bytes: u64,
    keep: u32,
    fsync: bool,
}

/// The JSON lines file sink.
pub struct JsonlFileSink {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for JsonlFileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonlFileSink").finish_non_exhaustive()
    }
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn anchor_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".anchor");
    PathBuf::from(s)
}

/// The last record of a file, as a chain head.
fn last_head(path: &Path) -> std::io::Result<Option<ChainHead>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut last = None;
    for line in BufReader::new(f).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        if let Ok(l) = serde_json::from_str::<Line<'_>>(&line) {
            last = Some(ChainHead {
                seq: l.seq,
                hash: l.hash,
            });
        }
    }
    Ok(last)
}

fn read_anchor(path: &Path) -> std::io::Result<Option<ChainHead>> {
    match fs::read_to_string(anchor_path(path)) {
        Ok(s) => {
            let v: serde_json::Value = serde_json::from_str(&s)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            Ok(Some(ChainHead {
                seq: v["seq"].as_i64().unwrap_or(0),
                hash: v["hash"].as_str().unwrap_or_default().to_owned(),
            }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_anchor(path: &Path, head: &ChainHead) -> std::io::Result<()> {
    let tmp = {
        let mut s = anchor_path(path).into_os_string();
        s.push(".tmp");
        PathBuf::from(s)
    };
    let body = serde_json::json!({"seq": head.seq, "hash": head.hash}).to_string();
    {
        let mut f = File::create(&tmp)?;
        f.write_all(body.as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, anchor_path(path))
}

impl State {
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        if self.keep == 0 {
            // No rotated file kept: the active file itself is pruned.
            write_anchor(&self.path, &self.head)?;
            fs::remove_file(&self.path)?;
        } else {
            let oldest = rotated(&self.path, self.keep);
            if oldest.exists() {
                if let Some(h) = last_head(&oldest)? {
                    write_anchor(&self.path, &h)?;
                }
                fs::remove_file(&oldest)?;
            }
            for n in (1..self.keep).rev() {
                let from = rotated(&self.path, n);
                if from.exists() {
                    fs::rename(&from, rotated(&self.path, n + 1))?;
                }
            }
            fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.len = 0;
        Ok(())
    }

    fn write(&mut self, batch: &[SinkEvent]) -> std::io::Result<()> {
        let mut head = self.head.clone();
        let mut buf = Vec::with_capacity(1024);
        let mut pending: Vec<u8> = Vec::with_capacity(batch.len() * 600);
        let result = (|| {
            for e in batch {
                let (seq, prev, hash) = head.append(&e.json);
                buf.clear();
                format_line(&mut buf, seq, &prev, &hash, &e.json);
                if self.len + (pending.len() + buf.len()) as u64 > self.max_bytes
                    && self.len + pending.len() as u64 > 0
                {
                    self.file.write_all(&pending)?;
                    self.len += pending.len() as u64;
                    pending.clear();
                    self.head = ChainHead {
                        seq: seq - 1,
                        hash: prev.clone(),
                    };
                    self.rotate()?;
                }
                pending.extend_from_slice(&buf);
            }
            self.file.write_all(&pending)?;
            self.file.flush()?;
            if self.fsync {
                self.file.sync_data()?;
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.len += pending.len() as u64;
                self.head = head;
                Ok(())
            }
            Err(e) => {
                // Undo the partial write of the active file so that a retry does not
                // duplicate lines. (Lines already moved to a rotated file stay, and the
                // chain head says so.)
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }
}

impl JsonlFileSink {
    /// Opens (or creates) the active file and resumes its chain.
    pub fn open(
        path: impl Into<PathBuf>,
        max_bytes: u64,
        keep_files: u32,
        fsync: bool,
    ) -> std::io::Result<Self> {
        let path = path.into();
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            fs::create_dir_all(dir)?;
        }
        let mut head = last_head(&path)?;
        let mut n = 1;
        while head.is_none() && n <= keep_files {
            head = last_head(&rotated(&path, n))?;
            n += 1;
        }
        let head = match head {
            Some(h) => h,
            None => read_anchor(&path)?.unwrap_or_default(),
        };
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            state: Arc::new(Mutex::new(State {
                path,
                file,
                len,
                head,
                max_bytes,
                keep: keep_files,
                fsync,
            })),
        })
    }
}

impl AuditSink for JsonlFileSink {
    fn name(&self) -> &str {
        "file"
    }

    fn write_batch(&mut self, batch: Arc<[SinkEvent]>) -> BoxFuture<'_, Result<(), SinkError>> {
        let state = Arc::clone(&self.state);
        Box::pin(async move {
            let res = tokio::task::spawn_blocking(move || match state.lock() {
                Ok(mut s) => s.write(&batch),
                Err(_) => Err(std::io::Error::other("state poisoned")),
            })
            .await;
            match res {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(SinkError::new("file", e.kind().to_string())),
                Err(_) => Err(SinkError::new("file", "writer task failed")),
            }
        })
    }
}

/// Verifies a JSON lines trail: the rotated files (oldest first) then the active file,
/// starting from `<path>.anchor` when present.
pub fn verify_jsonl(path: impl AsRef<Path>) -> std::io::Result<VerifyReport> {
    let path = path.as_ref();
    let mut files: Vec<PathBuf> = Vec::new();
    let mut n = 1;
    while rotated(path, n).exists() {
        files.push(rotated(path, n));
        n += 1;
    }
    files.reverse();
    files.push(path.to_path_buf());
    let mut v = Verifier::new(read_anchor(path)?);
    for f in files {
        let file = match File::open(&f) {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Line<'_>>(&line) {
                Ok(l) => v.push(&ChainRow {
                    seq: l.seq,
                    prev_hash: l.prev_hash,
                    hash: l.hash,
                    json: l.event.get().to_owned(),
                    columns: None,
                }),
                Err(_) => v.fail(Tampering::Malformed {
                    location: format!("{}:{}", f.display(), i + 1),
                }),
            }
            if v.failed() {
                return Ok(v.finish());
            }
        }
    }
    Ok(v.finish())
}
