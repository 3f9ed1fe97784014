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

/// The positions in `chunk` of the bytes for which `class` holds, as a bit mask (bit `i`
/// for byte `i`). The per-byte flags are computed branch-free (vector compares), then
/// gathered eight at a time with a multiplication: with every byte 0 or 1,
/// `x * 0x0102_0408_1020_4080` has byte `k` of `x` at bit `56 + k` and no carries.
#[inline(always)]
pub(crate) fn chunk_mask(chunk: &[u8; CHUNK], class: impl Fn(u8) -> u8) -> u32 {
    let mut flags = [0u8; CHUNK];
    for (f, &b) in flags.iter_mut().zip(chunk) {
        *f = class(b);
    }
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
    let lo = u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]);
    let hi = u64::from_le_bytes([b0, b1, b2, b3, b4, b5, b6, b7]);
    if lo | hi == 0 {
        return 0;
    }
    const GATHER: u64 = 0x0102_0408_1020_4080;
    let lo = (lo.wrapping_mul(GATHER) >> 56) as u32;
    let hi = (hi.wrapping_mul(GATHER) >> 56) as u32;
    lo | (hi << 8)
}

/// Calls `visit(p)` for each position `p` of `b` whose byte is in `class`, in increasing
/// order, until `visit` returns `true`; returns whether it did. Meant for values of at
/// least [`CHUNK`] bytes (shorter ones are tested byte by byte).
#[inline(always)]
pub(crate) fn find_flagged(
    b: &[u8],
    class: impl Fn(u8) -> u8 + Copy,
    mut visit: impl FnMut(usize) -> bool,
) -> bool {
    let n = b.len();
    if n < CHUNK {
        return (0..n).any(|p| class(b[p]) != 0 && visit(p));
    }
    let mut base = 0;
    while base < n {
        let mut mask = match b.get(base..base + CHUNK) {
            Some(chunk) => {
                let mut w = [0u8; CHUNK];
                w.copy_from_slice(chunk);
                chunk_mask(&w, class)
            }
            None => {
                // The tail: the last sixteen bytes, without the positions already seen.
                let start = n - CHUNK;
                let mut w = [0u8; CHUNK];
                w.copy_from_slice(&b[start..]);
                chunk_mask(&w, class) >> (base - start)
            }
        };
        while mask != 0 {
            let p = base + mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if visit(p) {
                return true;
            }
        }
        base += CHUNK;
    }
    false
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
    let word = |w: &[u8]| -> u64 {
        let mut a = [NEUTRAL; 8];
        a[..w.len()].copy_from_slice(w);
        u64::from_le_bytes(a)
    };
    match (b.get(..8), b.get(n.saturating_sub(8)..)) {
        (Some(head), Some(tail)) if n >= 8 => {
            word_has_control_lead(word(head)) || word_has_control_lead(word(tail))
        }
        _ => match (b.get(..4), b.get(n.saturating_sub(4)..)) {
            (Some(head), Some(tail)) if n >= 4 => {
                let x = u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]))
                    | (u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]])) << 32);
                word_has_control_lead(x)
            }
            _ => b.iter().any(|&c| control_lead(c) != 0),
        },
    }
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

/// Whether a byte may trigger or gate a built-in rule search, or start a forbidden
/// control character, or is the `:` of a URL: 0x22..=0x27 (`"` `#` `$` `%` `&` `'`),
/// 0x2E..=0x2F (`.` `/`), 0x3A..=0x3E (`:` `;` `<` `=` `>`), 0x5C (`\`), 0x60
/// (`` ` ``), 0x7C (`|`), and [`control_lead`]. A superset of the bytes of every
/// class in [`crate::rules`]' per-byte table (checked by a unit test).
#[inline(always)]
pub(crate) fn value_byte(b: u8) -> u8 {
    u8::from(b.wrapping_sub(0x22) < 6)
        | u8::from(b.wrapping_sub(0x2e) < 2)
        | u8::from(b.wrapping_sub(0x3a) < 5)
        | u8::from(b == 0x5c)
        | u8::from(b == 0x60)
        | u8::from(b == 0x7c)
        | control_lead(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positions(b: &[u8], class: impl Fn(u8) -> u8 + Copy) -> Vec<usize> {
        let mut out = Vec::new();
        find_flagged(b, class, |p| {
            out.push(p);
            false
        });
        out
    }

    fn plain(b: &[u8], class: impl Fn(u8) -> u8) -> Vec<usize> {
        (0..b.len()).filter(|&p| class(b[p]) != 0).collect()
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

    #[test]
    fn stops_when_asked() {
        let mut seen = Vec::new();
        let found = find_flagged(b"a;b;c;d", value_byte, |p| {
            seen.push(p);
            p == 3
        });
        assert!(found);
        assert_eq!(seen, vec![1, 3]);
    }

    proptest::proptest! {
        #[test]
        fn visits_exactly_the_flagged_bytes(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100)) {
            proptest::prop_assert_eq!(positions(&b, value_byte), plain(&b, value_byte));
            proptest::prop_assert_eq!(positions(&b, control_lead), plain(&b, control_lead));
            if b.len() < CHUNK {
                proptest::prop_assert_eq!(short_has_control_lead(&b), !plain(&b, control_lead).is_empty());
            }
        }
    }
}
