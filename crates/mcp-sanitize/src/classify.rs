//! One pass over the bytes of a value, sixteen at a time, visiting the positions of the
//! bytes of a class: the prefilter shared by the control-character check and the rule
//! search.
//!
//! A class is a branch-free `u8 -> 0 or 1` function, so that the sixteen per-byte flags of
//! a chunk compile to vector compares (SSE2 on x86-64); the flags are gathered into a bit
//! mask only when some byte of the chunk is flagged. No `memcpy` for the tail: the last
//! chunk of a value overlaps the chunk before it. Values shorter than sixteen bytes (keys,
//! tags) are tested as one or two overlapping words (control characters) or byte by byte
//! against a table (the rules).

/// Bytes tested at a time.
pub(crate) const CHUNK: usize = 16;

/// A byte that is in no class (pads short values).
const NEUTRAL: u8 = b'a';

/// The per-byte flags of a chunk (0 or 1), computed branch-free: vector compares.
#[inline(always)]
fn chunk_flags(chunk: &[u8; CHUNK], class: impl Fn(u8) -> u8) -> [u8; CHUNK] {
    let mut flags = [0u8; CHUNK];
    for (f, &b) in flags.iter_mut().zip(chunk) {
        *f = class(b);
    }
    flags
}

/// The flags of a chunk as two words (bytes 0..8 and 8..16).
#[inline(always)]
fn flag_words(flags: [u8; CHUNK]) -> (u64, u64) {
    let [
        a0,
        a1,
        a2,
        a3,
        a4,
        a5,
        a6,
        a7,
        b0,
        b1,
        b2,
        b3,
        b4,
        b5,
        b6,
        b7,
    ] = flags;
    (
        u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
        u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7]),
    )
}

/// The flag words gathered into a bit mask (bit `i` for byte `i`) with a multiplication:
/// with every byte 0 or 1, `x * 0x0102_0408_1020_4080` has byte `k` of `x` at bit
/// `56 + k` and no carries.
#[inline(always)]
fn gather((lo, hi): (u64, u64)) -> u32 {
    const GATHER: u64 = 0x0102_0408_1020_4080;
    let lo = (lo.wrapping_mul(GATHER) >> 56) as u32;
    let hi = (hi.wrapping_mul(GATHER) >> 56) as u32;
    lo | (hi << 8)
}

/// The positions in `chunk` of the bytes for which `class` holds, as a bit mask (bit `i`
/// for byte `i`).
#[inline(always)]
pub(crate) fn chunk_mask(chunk: &[u8; CHUNK], class: impl Fn(u8) -> u8) -> u32 {
    let (lo, hi) = flag_words(chunk_flags(chunk, class));
    if lo | hi == 0 {
        return 0;
    }
    gather((lo, hi))
}

/// The positions of the bytes of a class in a value, in increasing order: sixteen bytes
/// are classified at a time, then the flagged positions are read off the chunk's mask.
#[derive(Debug, Clone)]
pub(crate) struct Flagged<'a, C> {
    b: &'a [u8],
    class: C,
    /// Start of the next chunk to classify.
    next: usize,
    /// Start of the chunk `mask` belongs to.
    base: usize,
    /// Flagged positions of the current chunk not yet returned.
    mask: u32,
}

/// The positions of the bytes of `b` for which `class` holds ([`Flagged`]).
#[inline(always)]
pub(crate) fn flagged<C: Fn(u8) -> u8 + Copy>(b: &[u8], class: C) -> Flagged<'_, C> {
    Flagged {
        b,
        class,
        next: 0,
        base: 0,
        mask: 0,
    }
}

impl<C: Fn(u8) -> u8 + Copy> Iterator for Flagged<'_, C> {
    type Item = usize;

    #[inline(always)]
    fn next(&mut self) -> Option<usize> {
        while self.mask == 0 {
            let base = self.next;
            let n = self.b.len();
            if base >= n {
                return None;
            }
            // Thirty-two bytes at a time while there are: one test for both halves.
            if let (Some(x), Some(y)) = (
                self.b.get(base..base + CHUNK),
                self.b.get(base + CHUNK..base + 2 * CHUNK),
            ) {
                let mut w = [NEUTRAL; CHUNK];
                w.copy_from_slice(x);
                let fx = flag_words(chunk_flags(&w, self.class));
                w.copy_from_slice(y);
                let fy = flag_words(chunk_flags(&w, self.class));
                self.base = base;
                self.next = base + 2 * CHUNK;
                if fx.0 | fx.1 | fy.0 | fy.1 != 0 {
                    self.mask = gather(fx) | (gather(fy) << CHUNK);
                }
                continue;
            }
            let mut w = [NEUTRAL; CHUNK];
            self.mask = match (self.b.get(base..base + CHUNK), n.checked_sub(CHUNK)) {
                (Some(chunk), _) => {
                    w.copy_from_slice(chunk);
                    chunk_mask(&w, self.class)
                }
                (None, Some(start)) => {
                    // The tail: the last sixteen bytes, without the positions already seen.
                    w.copy_from_slice(&self.b[start..]);
                    chunk_mask(&w, self.class) >> (base - start)
                }
                (None, None) => {
                    // A value shorter than a chunk (callers usually test those otherwise).
                    for (d, &s) in w.iter_mut().zip(self.b) {
                        *d = s;
                    }
                    chunk_mask(&w, self.class)
                }
            };
            self.base = base;
            self.next = base + CHUNK;
        }
        let p = self.base + self.mask.trailing_zeros() as usize;
        self.mask &= self.mask - 1;
        Some(p)
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether some byte of `x` is zero (exact).
#[inline(always)]
fn has_zero_byte(x: u64) -> bool {
    x.wrapping_sub(ONES) & !x & HIGHS != 0
}

/// Whether some byte of `x` is a [`control_lead`] (exact: the classic "has a byte less
/// than n" test, n = 0x20 <= 0x80, and two "has a zero byte" tests).
#[inline(always)]
fn word_has_control_lead(x: u64) -> bool {
    (x.wrapping_sub(ONES * 0x20) & !x & HIGHS != 0)
        || has_zero_byte(x ^ (ONES * 0x7f))
        || has_zero_byte(x ^ (ONES * 0xc2))
}

/// Whether a value shorter than [`CHUNK`] bytes has a [`control_lead`]: one or two
/// (overlapping) words tested at once, no per-byte loop.
#[inline(always)]
pub(crate) fn short_has_control_lead(b: &[u8]) -> bool {
    let n = b.len();
    let word8 = |at: usize| {
        b.get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map_or(0, u64::from_le_bytes)
    };
    let word4 = |at: usize| {
        b.get(at..at + 4)
            .and_then(|w| <[u8; 4]>::try_from(w).ok())
            .map_or(0, |w| u64::from(u32::from_le_bytes(w)))
    };
    if n >= 8 {
        word_has_control_lead(word8(0)) || word_has_control_lead(word8(n - 8))
    } else if n >= 4 {
        // The upper half is padded with the neutral byte.
        let pad = u64::from_le_bytes([NEUTRAL; 8]) << 32;
        word_has_control_lead(word4(0) | pad) || word_has_control_lead(word4(n - 4) | pad)
    } else {
        b.iter().any(|&c| control_lead(c) != 0)
    }
}

/// Whether a value of at least [`CHUNK`] bytes has a forbidden control character
/// ([`control_at`]): sixteen bytes at a time tested for a [`control_lead`] with vector
/// compares OR-ed together (the last chunk overlapping), the exact test only in a chunk
/// that has one (a tab or line feed costs one scalar pass over its chunk).
#[inline(never)]
pub(crate) fn long_has_control(b: &[u8]) -> bool {
    #[inline(always)]
    fn any_lead(chunk: &[u8]) -> bool {
        let mut w = [NEUTRAL; CHUNK];
        w.copy_from_slice(chunk);
        let mut acc = 0u8;
        for c in w {
            acc |= control_lead(c);
        }
        acc != 0
    }
    let n = b.len();
    let mut base = 0;
    while base < n {
        let start = if base + CHUNK <= n {
            base
        } else {
            n.saturating_sub(CHUNK)
        };
        let end = (start + CHUNK).min(n);
        if b.get(start..end)
            .is_some_and(|c| c.len() < CHUNK || any_lead(c))
            && (start..end).any(|p| control_at(b, p))
        {
            return true;
        }
        base += CHUNK;
    }
    false
}

/// A byte that may start a forbidden control character: below 0x20, 0x7F, or 0xC2 (the
/// lead byte of U+0080..U+00BF, the C1 controls among them).
#[inline(always)]
pub(crate) fn control_lead(b: u8) -> u8 {
    u8::from(b < 0x20) | u8::from(b == 0x7f) | u8::from(b == 0xc2)
}

/// Whether a forbidden control character (every Unicode `Cc` character but tab, line
/// feed and carriage return) starts at `p`.
#[inline(always)]
pub(crate) fn control_at(b: &[u8], p: usize) -> bool {
    match b.get(p) {
        Some(&c) if c < 0x20 => !matches!(c, b'\t' | b'\n' | b'\r'),
        Some(0x7f) => true,
        // C1 controls U+0080..U+009F are encoded as 0xC2 0x80..=0x9F.
        Some(0xc2) => matches!(b.get(p + 1), Some(0x80..=0x9f)),
        _ => false,
    }
}

/// `x < n` as unsigned bytes, written as a signed compare (`x ^ 0x80` orders like `x`),
/// which SSE2 has for bytes: with a `wrapping_sub` before it, a range test is one add and
/// one compare.
#[inline(always)]
fn below(x: u8, n: u8) -> u8 {
    u8::from(((x ^ 0x80) as i8) < ((n ^ 0x80) as i8))
}

/// Whether a byte may trigger or gate a built-in rule search, or start a forbidden
/// control character, or is the `:` of a URL: 0x00..=0x27 but the space (so `!` too,
/// which costs one table lookup where it occurs), 0x2D..=0x2F (`-` `.` `/`), 0x3A..=0x3E
/// (`:` `;` `<` `=` `>`), 0x5C (`\`) and 0x7C (`|`), 0x60 (`` ` ``), 0x7F and 0xC2. A
/// superset of [`control_lead`] and of the bytes of every class in [`crate::rules`]'
/// per-byte table (checked by unit tests).
#[inline(always)]
pub(crate) fn value_byte(b: u8) -> u8 {
    (below(b, 0x28) & u8::from(b != b' '))
        | below(b.wrapping_sub(0x2d), 3)
        | below(b.wrapping_sub(0x3a), 5)
        | u8::from((b | 0x20) == 0x7c)
        | u8::from(b == 0x60)
        | u8::from(b == 0x7f)
        | u8::from(b == 0xc2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positions(b: &[u8], class: impl Fn(u8) -> u8 + Copy) -> Vec<usize> {
        flagged(b, class).collect()
    }

    fn plain(b: &[u8], class: impl Fn(u8) -> u8) -> Vec<usize> {
        (0..b.len()).filter(|&p| class(b[p]) != 0).collect()
    }

    #[test]
    fn value_byte_is_its_list() {
        for c in 0u8..=255 {
            let listed =
                (c < 0x28 && c != b' ') || b"-./:;<=>\\|`".contains(&c) || c == 0x7f || c == 0xc2;
            assert_eq!(value_byte(c) != 0, listed, "{c:#x}");
            if control_lead(c) != 0 {
                assert!(value_byte(c) != 0, "{c:#x}");
            }
        }
    }

    #[test]
    fn chunk_mask_is_exact_per_byte() {
        for c in 0u8..=255 {
            for pos in 0..CHUNK {
                let mut w = [NEUTRAL; CHUNK];
                w[pos] = c;
                let expect = if value_byte(c) != 0 { 1 << pos } else { 0 };
                assert_eq!(chunk_mask(&w, value_byte), expect, "{c:#x} at {pos}");
            }
        }
        assert_eq!(value_byte(NEUTRAL), 0);
    }

    #[test]
    fn every_length_and_position() {
        // Every length up to 50 and every position of a flagged byte: each position is
        // visited once, in order (short values, the overlapping tail).
        for n in 0..50 {
            for p in 0..n {
                for c in [b'\'', 0u8, 0xc2, b'|'] {
                    let mut v = vec![b'x'; n];
                    v[p] = c;
                    assert_eq!(positions(&v, value_byte), vec![p], "n={n} p={p} c={c:#x}");
                }
            }
            let all = vec![b';'; n];
            assert_eq!(positions(&all, value_byte), (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn short_values_find_every_control_lead() {
        for n in 0..CHUNK {
            for p in 0..n {
                for c in 0u8..=255 {
                    let mut v = vec![b'x'; n];
                    v[p] = c;
                    assert_eq!(
                        short_has_control_lead(&v),
                        control_lead(c) != 0,
                        "n={n} p={p} c={c:#x}"
                    );
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn visits_exactly_the_flagged_bytes(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100)) {
            proptest::prop_assert_eq!(positions(&b, value_byte), plain(&b, value_byte));
            proptest::prop_assert_eq!(positions(&b, control_lead), plain(&b, control_lead));
            let any = !plain(&b, control_lead).is_empty();
            if b.len() < CHUNK {
                proptest::prop_assert_eq!(short_has_control_lead(&b), any);
            }
            let exact = (0..b.len()).any(|p| control_at(&b, p));
            proptest::prop_assert_eq!(long_has_control(&b), exact);
        }
    }
}
