//! Redaction of a body as it streams, with bounded memory: [`StreamRedactor`], the
//! barrier bytes that let a body be redacted in pieces, and the view of JSON escapes.
//!
//! # Why the pieces redact like the whole
//!
//! A *barrier* is an ASCII byte that is not a word character nor `\\` (which starts a JSON
//! escape) and that no match of any detector can contain (read from the patterns' syntax: every literal and class they are
//! made of). With the built-in detectors it is `"`. Cut a text just before a barrier: no
//! match crosses the cut, a word boundary (`\b`) at the cut reads the same on both sides
//! (the barrier and the end of a text are both non-word), and the patterns hold no `^`, `$`,
//! `\A` or `\z` (refused in PII patterns). So each pass of [`Redactor::redact`] replaces in
//! each side exactly what it replaces there in the whole text, its replacements hold no
//! barrier, and the passes of a side that has no match left change nothing: the redaction
//! of the whole is the redactions of the sides, joined. A body is therefore redacted
//! *segment* by segment, a segment running from one barrier to the byte before the next,
//! and a segment is sent on as soon as the barrier after it has arrived.
//!
//! # The window rule
//!
//! A segment longer than `max_match_bytes` (the window, `W`) is not held whole: it is cut
//! into pieces of `W` bytes (the last one shorter), each redacted alone, and each cut is
//! checked: when the two pieces around it redacted together differ from the two redacted
//! apart (a match crosses the cut, or a boundary reads differently there), the cut is
//! *hot*. From the piece before the first hot cut to the end of the segment, the bytes are
//! replaced by one `[REDACTED:over_window]` (the barrier that opens the segment, a JSON
//! string's opening quote, stays; fail closed: a secret longer than the window,
//! or one across a cut, is withheld with what surrounds it, never sent in part). A segment
//! of at most `W` bytes is redacted exactly as [`Redactor::redact`] redacts the whole body.
//! At most two pieces are held at a time: memory per stream is about `2 × W` plus one
//! upstream chunk.
//!
//! # JSON escapes
//!
//! A JSON string can spell a secret with escapes (`AKIA\u0049OSFODNN7EXAMPLE`, `\/`), and
//! an escape before a secret hides the word boundary its detector needs (`line\nAKIA...`:
//! the bytes hold `nA`). Each segment with a `\` is therefore also read through a *view*:
//! `\uXXXX` of a character (surrogate pairs included) and `\/` decoded; every other
//! escape (`\n`, `\t`, `\"`, `\\`, `\u000a`, `\u0022`, a lone surrogate, ...) replaced by
//! a barrier byte, which reads as a boundary and which no match can hold. When the view
//! holds a match, the segment is sent as its redacted view with those escapes put back as
//! written (the characters decoded stay decoded): valid JSON that means the same. Limits:
//! an escaped control character is a boundary, not whitespace (`Bearer\tTOKEN` is not a
//! bearer credential to the detector); a configuration whose patterns leave no barrier
//! byte keeps those escapes as written in the view.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use regex_syntax::hir::{Class, Hir, HirKind, Look};

use super::Redactor;

/// What replaces the rest of a segment longer than the window from a hot cut on.
pub const OVER_WINDOW_MARKER: &[u8] = b"[REDACTED:over_window]";

/// The bytes no detector match can contain, ASCII and non-word (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct Barriers {
    table: [bool; 256],
    /// The only barrier, when there is exactly one (searched with `memchr`).
    only: Option<u8>,
    any: bool,
}

impl Barriers {
    /// From the parsed patterns.
    pub(crate) fn new<'a>(patterns: impl IntoIterator<Item = &'a Hir>) -> Self {
        let mut seen = [false; 256];
        for h in patterns {
            mark(h, &mut seen);
        }
        let mut table = [false; 256];
        for b in 0u8..0x80 {
            let word = b.is_ascii_alphanumeric() || b == b'_';
            // `\` starts a JSON escape, which the view reads whole: never a cut.
            table[usize::from(b)] = !word && b != b'\\' && !seen[usize::from(b)];
        }
        let count = table.iter().filter(|b| **b).count();
        let only = if count == 1 {
            (0u8..0x80).find(|b| table[usize::from(*b)])
        } else {
            None
        };
        Self {
            table,
            only,
            any: count > 0,
        }
    }

    /// Whether `b` is a barrier.
    pub(crate) fn is(&self, b: u8) -> bool {
        self.table[usize::from(b)]
    }

    /// A barrier byte to stand for escapes in the view (`"` when it is one).
    pub(crate) fn sentinel(&self) -> Option<u8> {
        if self.is(b'"') {
            Some(b'"')
        } else {
            (0u8..0x80).find(|b| self.is(*b))
        }
    }

    /// The position of the last barrier in `s`.
    pub(crate) fn last_in(&self, s: &[u8]) -> Option<usize> {
        if !self.any {
            return None;
        }
        match self.only {
            Some(b) => memchr::memrchr(b, s),
            None => s.iter().rposition(|b| self.is(*b)),
        }
    }

    /// The position of the first barrier in `s`.
    pub(crate) fn first_in(&self, s: &[u8]) -> Option<usize> {
        if !self.any {
            return None;
        }
        match self.only {
            Some(b) => memchr::memchr(b, s),
            None => s.iter().position(|b| self.is(*b)),
        }
    }
}

/// Marks every byte a match of `h` may contain (non-ASCII characters: every byte from
/// 0x80, which is never a barrier anyway).
fn mark(h: &Hir, seen: &mut [bool; 256]) {
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => {}
        HirKind::Literal(l) => {
            for b in l.0.iter() {
                seen[usize::from(*b)] = true;
            }
        }
        HirKind::Class(Class::Bytes(c)) => {
            for r in c.ranges() {
                for b in r.start()..=r.end() {
                    seen[usize::from(b)] = true;
                }
            }
        }
        HirKind::Class(Class::Unicode(c)) => {
            for r in c.ranges() {
                let (start, end) = (u32::from(r.start()), u32::from(r.end()));
                for cp in start..=end.min(0x7f) {
                    if let Some(s) = seen.get_mut(cp as usize) {
                        *s = true;
                    }
                }
                if end >= 0x80 {
                    for s in seen.iter_mut().skip(0x80) {
                        *s = true;
                    }
                }
            }
        }
        HirKind::Repetition(r) => mark(&r.sub, seen),
        HirKind::Capture(c) => mark(&c.sub, seen),
        HirKind::Concat(v) | HirKind::Alternation(v) => {
            for h in v {
                mark(h, seen);
            }
        }
    }
}

/// Whether a pattern uses an anchor to the start or end of the text or of a line, which a
/// body scanned in pieces cannot honour.
pub(crate) fn has_text_anchor(h: &Hir) -> bool {
    let looks = h.properties().look_set();
    [
        Look::Start,
        Look::End,
        Look::StartLF,
        Look::EndLF,
        Look::StartCRLF,
        Look::EndCRLF,
    ]
    .into_iter()
    .any(|l| looks.contains(l))
}

/// Whether `s` may hold a JSON escape (a `\` before another byte).
pub(crate) fn has_escape(s: &[u8]) -> bool {
    memchr::memchr(b'\\', s).is_some_and(|i| i + 1 < s.len())
}

fn hex4(s: Option<&[u8]>) -> Option<u32> {
    let s = s?;
    if s.len() != 4 || !s.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

/// A segment read through its JSON escapes (see the module docs).
pub(crate) struct View {
    /// The text with the escapes of characters decoded, and every other escape replaced
    /// by the sentinel.
    pub(crate) text: Vec<u8>,
    /// The escapes the sentinels stand for, in order (ranges of the segment).
    saved: Vec<(usize, usize)>,
    /// The segment itself starts with the sentinel byte (its barrier).
    lead: bool,
    sentinel: u8,
}

impl View {
    /// The view of `s`, or `None` when it has no escape. `sentinel` is a barrier byte
    /// (absent from a segment after its first byte): the escapes that do not stand for a
    /// character a detector reads as part of a secret (`\n`, `\t`, `\"`, `\\`,
    /// `\u000a`, a lone surrogate, ...) become it, so that they read as a boundary, and
    /// come back as written afterwards. Without one, they stay as written.
    pub(crate) fn of(s: &[u8], sentinel: Option<u8>) -> Option<Self> {
        let mut text: Option<Vec<u8>> = None;
        let mut saved = Vec::new();
        let mut copied = 0;
        let mut i = 0;
        while let Some(off) = s.get(i..).and_then(|rest| memchr::memchr(b'\\', rest)) {
            let at = i + off;
            // (what it decodes to: a character or the sentinel, its length)
            let decoded: Option<(Option<char>, usize)> = match s.get(at + 1) {
                None => None,
                Some(b'/') => Some((Some('/'), 2)),
                Some(b'u') => match hex4(s.get(at + 2..at + 6)) {
                    None => None,
                    Some(cp @ 0xD800..=0xDBFF) => {
                        let lo = (s.get(at + 6..at + 8) == Some(b"\\u"))
                            .then(|| hex4(s.get(at + 8..at + 12)))
                            .flatten()
                            .filter(|lo| (0xDC00..=0xDFFF).contains(lo));
                        match lo {
                            Some(lo) => {
                                char::from_u32(0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00))
                                    .map(|c| (Some(c), 12))
                            }
                            None => Some((None, 6)),
                        }
                    }
                    Some(0x00..=0x1F | 0x22 | 0x5C | 0xDC00..=0xDFFF) => Some((None, 6)),
                    Some(cp) => char::from_u32(cp).map(|c| (Some(c), 6)),
                },
                Some(_) => Some((None, 2)),
            };
            let Some((c, len)) = decoded else {
                // A `\` at the end, or a malformed `\u`: left as it is.
                i = at + 2;
                continue;
            };
            let len = len.min(s.len() - at);
            let o = text.get_or_insert_with(|| Vec::with_capacity(s.len()));
            o.extend_from_slice(s.get(copied..at).unwrap_or_default());
            match (c, sentinel) {
                (Some(c), _) => {
                    let mut utf8 = [0u8; 4];
                    o.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                }
                (None, Some(x)) => {
                    o.push(x);
                    saved.push((at, at + len));
                }
                (None, None) => o.extend_from_slice(s.get(at..at + len).unwrap_or_default()),
            }
            copied = at + len;
            i = at + len;
        }
        let mut text = text?;
        text.extend_from_slice(s.get(copied..).unwrap_or_default());
        Some(Self {
            text,
            saved,
            lead: sentinel.is_some() && s.first().copied() == sentinel,
            sentinel: sentinel.unwrap_or(0),
        })
    }

    /// `redacted` (this view after redaction, which never removes a sentinel: no match
    /// holds a barrier) with the saved escapes of `s` back in place of the sentinels.
    pub(crate) fn restore(&self, s: &[u8], redacted: &[u8]) -> Vec<u8> {
        if self.saved.is_empty() {
            return redacted.to_vec();
        }
        let mut out = Vec::with_capacity(redacted.len() + 6 * self.saved.len());
        let mut saved = self.saved.iter();
        let mut skip_lead = self.lead;
        for (i, b) in redacted.iter().enumerate() {
            if *b == self.sentinel
                && !(i == 0 && std::mem::take(&mut skip_lead))
                && let Some((from, to)) = saved.next()
            {
                out.extend_from_slice(s.get(*from..*to).unwrap_or_default());
                continue;
            }
            out.push(*b);
        }
        out
    }
}

impl Redactor {
    /// One segment: redacted as written, then through the view of its JSON escapes.
    pub(crate) fn redact_unit<'a>(&self, seg: &'a [u8]) -> Cow<'a, [u8]> {
        let first = self.redact(seg);
        let Some(view) = View::of(&first, self.barriers.sentinel()) else {
            return first;
        };
        match self.redact(&view.text) {
            Cow::Borrowed(_) => first,
            Cow::Owned(v) => Cow::Owned(view.restore(&first, &v)),
        }
    }

    /// Redacts like [`Redactor::redact`], and also what JSON escapes spell (`\uXXXX`,
    /// `\/`): segment by segment (from one barrier byte to the next, `"` with the
    /// built-in detectors), each sent as its redacted view with those escapes decoded when
    /// the view holds a match the written bytes did not. Without such escapes, exactly
    /// [`Redactor::redact`]. This is what [`crate::ResultScanLayer`] applies to a whole
    /// SSE event and to each segment of a streamed body.
    pub fn redact_escaped<'a>(&self, input: &'a [u8]) -> Cow<'a, [u8]> {
        if !has_escape(input) {
            return self.redact(input);
        }
        let mut out: Option<Vec<u8>> = None;
        let mut start = 0;
        loop {
            let end = input
                .get(start + 1..)
                .and_then(|rest| self.barriers.first_in(rest))
                .map_or(input.len(), |p| start + 1 + p);
            let seg = input.get(start..end).unwrap_or_default();
            match self.redact_unit(seg) {
                Cow::Borrowed(b) => {
                    if let Some(o) = out.as_mut() {
                        o.extend_from_slice(b);
                    }
                }
                Cow::Owned(v) => {
                    let o = out.get_or_insert_with(|| {
                        let mut o = Vec::with_capacity(input.len());
                        o.extend_from_slice(input.get(..start).unwrap_or_default());
                        o
                    });
                    o.extend_from_slice(&v);
                }
            }
            if end >= input.len() {
                break;
            }
            start = end;
        }
        match out {
            Some(o) => Cow::Owned(o),
            None => Cow::Borrowed(input),
        }
    }

    /// The window (`max_match_bytes`).
    pub fn max_match_bytes(&self) -> usize {
        self.window
    }

    /// A redactor for one streamed body (see [`StreamRedactor`]).
    pub fn stream(self: &Arc<Self>) -> StreamRedactor {
        StreamRedactor::new(self.clone())
    }
}

/// Redacts one body as it streams, with bounded memory: what it is given, it hands on at
/// once except the current segment (up to the next barrier byte, `"` with the built-in
/// detectors), and within a segment longer than the window (`max_match_bytes`) at most two
/// pieces of the window's size. The result is [`Redactor::redact_escaped`] of the whole
/// body whatever the chunk boundaries, up to the window rule (see the
/// [module docs](self)): exactly that when no segment is longer than the window.
///
/// ```
/// use std::sync::Arc;
/// use bytes::Bytes;
/// use mcp_sanitize::{Redactor, ResultScanConfig};
///
/// let redactor = Arc::new(Redactor::new(&ResultScanConfig::default()).unwrap());
/// let mut stream = redactor.stream();
/// let mut out = Vec::new();
/// stream.push(Bytes::from_static(b"{\"key\":\"AKIAIOSF"), &mut out);
/// stream.push(Bytes::from_static(b"ODNN7EXAMPLE\"}"), &mut out);
/// stream.finish(&mut out);
/// assert_eq!(out.concat(), b"{\"key\":\"[REDACTED:aws_access_key]\"}");
/// ```
#[derive(Debug)]
pub struct StreamRedactor {
    redactor: Arc<Redactor>,
    /// Input not handed on yet: from the start of the current segment, or of the current
    /// piece inside a long one.
    buf: BytesMut,
    /// Inside a segment longer than the window.
    long: bool,
    /// Pieces of the long segment so far.
    pieces: usize,
    /// The previous piece, waiting for the check of the cut after it.
    held: Option<Bytes>,
    /// A hot cut was found in this long segment: its rest is withheld.
    hot: bool,
}

impl StreamRedactor {
    /// A redactor for one body.
    pub fn new(redactor: Arc<Redactor>) -> Self {
        Self {
            redactor,
            buf: BytesMut::new(),
            long: false,
            pieces: 0,
            held: None,
            hot: false,
        }
    }

    /// Bytes received and not handed on yet (at most about twice the window, plus the
    /// last chunk's tail).
    pub fn held_back(&self) -> usize {
        self.buf.len() + self.held.as_ref().map_or(0, Bytes::len)
    }

    /// Takes the next chunk of the body; appends what can be handed on to `out` (nothing
    /// empty).
    pub fn push<E: Extend<Bytes>>(&mut self, chunk: Bytes, out: &mut E) {
        if chunk.is_empty() {
            return;
        }
        if !self.long && !self.buf.is_empty() {
            // The current segment ends at the first barrier of the chunk: only it is
            // copied; the whole segments after it go on without a copy.
            if let Some(f) = self
                .redactor
                .barriers
                .first_in(&chunk)
                .filter(|f| self.buf.len() + f <= self.redactor.window)
            {
                self.buf
                    .extend_from_slice(chunk.get(..f).unwrap_or_default());
                let seg = self.buf.split().freeze();
                emit(out, self.redactor.redact_escaped(&seg), &seg);
                self.consume(chunk.slice(f..), out);
                return;
            }
        }
        let data = if self.buf.is_empty() {
            chunk
        } else {
            self.buf.extend_from_slice(&chunk);
            self.buf.split().freeze()
        };
        self.consume(data, out);
    }

    /// The body ended: appends the rest to `out`.
    pub fn finish<E: Extend<Bytes>>(&mut self, out: &mut E) {
        if self.long {
            if !self.buf.is_empty() {
                let piece = self.buf.split().freeze();
                self.next_piece(piece, out);
            }
            self.end_long(out);
        } else if !self.buf.is_empty() {
            let seg = self.buf.split().freeze();
            emit(out, self.redactor.redact_escaped(&seg), &seg);
        }
    }

    /// Hands on what `data` (the input from where the buffer began) allows; keeps the
    /// rest in the buffer.
    fn consume<E: Extend<Bytes>>(&mut self, mut data: Bytes, out: &mut E) {
        let window = self.redactor.window;
        loop {
            if !self.long {
                let (short, long) = self.short_segments(&data);
                if short > 0 {
                    let region = data.split_to(short);
                    emit(out, self.redactor.redact_escaped(&region), &region);
                }
                if !long {
                    self.buf.extend_from_slice(&data);
                    return;
                }
                self.long = true;
                self.pieces = 0;
                self.held = None;
                self.hot = false;
            }
            // The barrier that opened the segment is its first byte, not its end.
            let from = usize::from(self.pieces == 0);
            let end = data
                .get(from..)
                .and_then(|rest| self.redactor.barriers.first_in(rest))
                .map(|p| p + from);
            match end {
                Some(p) if p <= window => {
                    let piece = data.split_to(p);
                    if !piece.is_empty() {
                        self.next_piece(piece, out);
                    }
                    self.end_long(out);
                }
                _ if data.len() >= window => {
                    let piece = data.split_to(window);
                    self.next_piece(piece, out);
                }
                _ => {
                    self.buf.extend_from_slice(&data);
                    return;
                }
            }
        }
    }

    /// How many bytes at the front of `data` (which starts a segment) are whole segments
    /// of at most the window, and whether the segment after them is already longer. Jumps
    /// a window at a time to the last barrier in it (every gap before it is shorter).
    fn short_segments(&self, data: &[u8]) -> (usize, bool) {
        let window = self.redactor.window;
        let barriers = &self.redactor.barriers;
        let mut cur = 0;
        loop {
            let from = cur + 1;
            let end = data.len().min(cur + window + 1);
            let last = data
                .get(from..end)
                .and_then(|w| barriers.last_in(w))
                .map(|p| from + p);
            if data.len() - cur <= window {
                return (last.unwrap_or(cur), false);
            }
            match last {
                Some(p) => cur = p,
                None => return (cur, true),
            }
        }
    }

    /// The next piece of a long segment.
    fn next_piece<E: Extend<Bytes>>(&mut self, piece: Bytes, out: &mut E) {
        self.pieces += 1;
        if self.hot {
            return;
        }
        match self.held.take() {
            None => self.held = Some(piece),
            Some(prev) => {
                if self.redactor.cut_is_hot(&prev, &piece) {
                    self.hot = true;
                    // The barrier that opens the segment stays (a JSON string keeps its
                    // opening quote).
                    if self.pieces == 2
                        && prev.first().is_some_and(|b| self.redactor.barriers.is(*b))
                    {
                        out.extend(Some(prev.slice(..1)));
                    }
                    out.extend(Some(Bytes::from_static(OVER_WINDOW_MARKER)));
                } else {
                    emit(out, self.redactor.redact_unit(&prev), &prev);
                    self.held = Some(piece);
                }
            }
        }
    }

    /// The long segment ended.
    fn end_long<E: Extend<Bytes>>(&mut self, out: &mut E) {
        if let Some(last) = self.held.take() {
            emit(out, self.redactor.redact_unit(&last), &last);
        }
        self.long = false;
        self.pieces = 0;
        self.hot = false;
    }
}

impl Redactor {
    /// Whether the cut between two pieces of a long segment is hot: the two redacted
    /// together differ from the two redacted apart.
    pub(crate) fn cut_is_hot(&self, a: &[u8], b: &[u8]) -> bool {
        let mut joined = Vec::with_capacity(a.len() + b.len());
        joined.extend_from_slice(a);
        joined.extend_from_slice(b);
        let (ra, rb, rj) = (
            self.redact_unit(a),
            self.redact_unit(b),
            self.redact_unit(&joined),
        );
        if matches!(
            (&ra, &rb, &rj),
            (Cow::Borrowed(_), Cow::Borrowed(_), Cow::Borrowed(_))
        ) {
            return false;
        }
        rj.len() != ra.len() + rb.len()
            || rj.get(..ra.len()) != Some(&ra[..])
            || rj.get(ra.len()..) != Some(&rb[..])
    }
}

/// Appends a redacted region to `out`: the input itself (no copy) when nothing changed.
fn emit<E: Extend<Bytes>>(out: &mut E, redacted: Cow<'_, [u8]>, input: &Bytes) {
    let b = match redacted {
        Cow::Borrowed(_) => input.clone(),
        Cow::Owned(v) => Bytes::from(v),
    };
    if !b.is_empty() {
        out.extend(Some(b));
    }
}
