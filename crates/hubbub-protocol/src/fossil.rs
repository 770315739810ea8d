//! Fossil SCM's delta format: what centrifuge-js (and Centrifugo) use to send a publication
//! as the difference from the previous one (`delta: true`).
//!
//! [`create`] follows the encoder of Fossil's `delta.c` step for step (16-byte rolling-hash
//! landmarks sampled from the source, matches extended both ways, a copy command only where
//! it is shorter than the literal), so it produces the same bytes as Fossil for the same
//! input (the tests hold vectors made by `fossil test-delta-create`); like the Go and
//! JavaScript ports, the hash reads bytes as unsigned (Fossil's C reads `char`, signed on
//! x86, so for bytes ≥ 0x80 the matches found may differ; every delta is valid either way).
//! [`apply`] is the decoder, for tests and fuzzing: the server never applies deltas.
//!
//! Format: `<target length>\n`, then commands `<n>@<offset>,` (copy n bytes of the source
//! from offset) and `<n>:<n bytes>` (literal), then `<checksum>;`. Numbers are base 64
//! (`0-9A-Z_a-z~`, most significant digit first).

/// Bytes of the rolling hash's window (and of the source's sampled blocks).
const NHASH: usize = 16;

/// How many landmark candidates are tried for one window position (as Fossil).
const MAX_CANDIDATES: usize = 250;

const DIGITS: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";

/// Fossil's rolling hash over the last [`NHASH`] bytes.
struct RollingHash {
    a: u16,
    b: u16,
    i: usize,
    window: [u8; NHASH],
}

impl RollingHash {
    fn new(block: &[u8]) -> Self {
        let mut window = [0u8; NHASH];
        window.copy_from_slice(&block[..NHASH]);
        let (mut a, mut b) = (0u16, 0u16);
        for &byte in &window {
            a = a.wrapping_add(byte as u16);
            b = b.wrapping_add(a);
        }
        RollingHash { a, b, i: 0, window }
    }

    /// Slides the window one byte on.
    fn next(&mut self, byte: u8) {
        let old = self.window[self.i] as u16;
        self.window[self.i] = byte;
        self.i = (self.i + 1) & (NHASH - 1);
        self.a = self.a.wrapping_sub(old).wrapping_add(byte as u16);
        self.b = self.b.wrapping_sub((NHASH as u16).wrapping_mul(old)).wrapping_add(self.a);
    }

    fn value(&self) -> u32 {
        self.a as u32 | (self.b as u32) << 16
    }
}

fn put_int(out: &mut Vec<u8>, mut v: usize) {
    if v == 0 {
        out.push(b'0');
        return;
    }
    let mut digits = [0u8; 12];
    let mut n = 0;
    while v > 0 {
        digits[n] = DIGITS[v & 63];
        v >>= 6;
        n += 1;
    }
    out.extend(digits[..n].iter().rev());
}

/// Digits of `v` in base 64.
fn digit_count(v: usize) -> usize {
    let mut count = 1;
    let mut x = 64usize;
    while v >= x {
        count += 1;
        x = match x.checked_shl(6) {
            Some(next) => next,
            None => break,
        };
    }
    count
}

/// The sum of the data as big-endian 32-bit words, the last one zero-padded.
fn checksum(data: &[u8]) -> u32 {
    data.chunks(4).fold(0u32, |sum, chunk| {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        sum.wrapping_add(u32::from_be_bytes(word))
    })
}

fn put_literal(out: &mut Vec<u8>, literal: &[u8]) {
    put_int(out, literal.len());
    out.push(b':');
    out.extend_from_slice(literal);
}

/// The delta that turns `source` into `target`.
pub fn create(source: &[u8], target: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(target.len() / 2 + 16);
    put_int(&mut out, target.len());
    out.push(b'\n');
    // A source this small has no block to copy from: the whole target is one literal.
    if source.len() <= NHASH {
        put_literal(&mut out, target);
        put_int(&mut out, checksum(target) as usize);
        out.push(b';');
        return out;
    }

    // Landmarks: the hash of every NHASH-byte block of the source, chained by hash value.
    let blocks = source.len() / NHASH;
    let mut collide = vec![usize::MAX; blocks];
    let mut landmark = vec![usize::MAX; blocks];
    let mut start = 0;
    while start < source.len() - NHASH {
        let hv = RollingHash::new(&source[start..]).value() as usize % blocks;
        collide[start / NHASH] = landmark[hv];
        landmark[hv] = start / NHASH;
        start += NHASH;
    }

    let mut base = 0;
    while base + NHASH < target.len() {
        let mut hash = RollingHash::new(&target[base..]);
        // The window at target[base + i..]; the best copy found so far.
        let mut i = 0;
        let (mut best_count, mut best_offset, mut best_literal) = (0, 0, 0);
        loop {
            let mut block = landmark[hash.value() as usize % blocks];
            let mut tries = 0;
            while block != usize::MAX && tries < MAX_CANDIDATES {
                tries += 1;
                let src = block * NHASH;
                // Forward from src and target[base + i], then backward (not before base).
                let forward =
                    source[src..].iter().zip(&target[base + i..]).take_while(|(s, t)| s == t).count();
                let mut backward = 0;
                while backward + 1 < src
                    && backward < i
                    && source[src - backward - 1] == target[base + i - backward - 1]
                {
                    backward += 1;
                }
                // `forward` counts the byte at src itself; Fossil's count is the same sum.
                let count = forward + backward;
                let offset = src - backward;
                let literal = i - backward;
                let cost = digit_count(literal) + digit_count(count) + digit_count(offset) + 3;
                if count >= cost && count > best_count {
                    best_count = count;
                    best_offset = offset;
                    best_literal = literal;
                }
                block = collide[block];
            }
            if best_count > 0 {
                if best_literal > 0 {
                    put_literal(&mut out, &target[base..base + best_literal]);
                    base += best_literal;
                }
                base += best_count;
                put_int(&mut out, best_count);
                out.push(b'@');
                put_int(&mut out, best_offset);
                out.push(b',');
                break;
            }
            if base + i + NHASH >= target.len() {
                // The end, and no match: the rest is literal.
                put_literal(&mut out, &target[base..]);
                base = target.len();
                break;
            }
            hash.next(target[base + i + NHASH]);
            i += 1;
        }
    }
    if base < target.len() {
        put_literal(&mut out, &target[base..]);
    }
    put_int(&mut out, checksum(target) as usize);
    out.push(b';');
    out
}

/// Why a delta cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("malformed delta")]
    Malformed,
    #[error("the delta's output is larger than allowed")]
    TooLarge,
    #[error("a copy beyond the end of the source")]
    CopyOutOfRange,
    #[error("the output's length differs from the delta's header")]
    WrongLength,
    #[error("the output's checksum differs from the delta's")]
    BadChecksum,
}

/// Reads base-64 numbers and command characters from a delta.
struct Reader<'a> {
    delta: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn int(&mut self) -> Result<usize, ApplyError> {
        let start = self.pos;
        let mut v: usize = 0;
        while let Some(digit) = self.delta.get(self.pos).and_then(|&c| DIGITS.iter().position(|&d| d == c)) {
            v = v.checked_mul(64).and_then(|v| v.checked_add(digit)).ok_or(ApplyError::Malformed)?;
            self.pos += 1;
        }
        if self.pos == start {
            return Err(ApplyError::Malformed);
        }
        Ok(v)
    }

    fn byte(&mut self) -> Result<u8, ApplyError> {
        let c = *self.delta.get(self.pos).ok_or(ApplyError::Malformed)?;
        self.pos += 1;
        Ok(c)
    }
}

/// Applies a delta to `source`; the output may not exceed `max_len` bytes.
pub fn apply(source: &[u8], delta: &[u8], max_len: usize) -> Result<Vec<u8>, ApplyError> {
    let mut r = Reader { delta, pos: 0 };
    let len = r.int()?;
    if len > max_len {
        return Err(ApplyError::TooLarge);
    }
    if r.byte()? != b'\n' {
        return Err(ApplyError::Malformed);
    }
    let mut out = Vec::with_capacity(len);
    loop {
        let n = r.int()?;
        match r.byte()? {
            b'@' => {
                let offset = r.int()?;
                if r.byte()? != b',' {
                    return Err(ApplyError::Malformed);
                }
                let end = offset
                    .checked_add(n)
                    .filter(|&end| end <= source.len())
                    .ok_or(ApplyError::CopyOutOfRange)?;
                if out.len() + n > len {
                    return Err(ApplyError::WrongLength);
                }
                out.extend_from_slice(&source[offset..end]);
            }
            b':' => {
                let end =
                    r.pos.checked_add(n).filter(|&end| end <= delta.len()).ok_or(ApplyError::Malformed)?;
                if out.len() + n > len {
                    return Err(ApplyError::WrongLength);
                }
                out.extend_from_slice(&delta[r.pos..end]);
                r.pos = end;
            }
            b';' => {
                if out.len() != len {
                    return Err(ApplyError::WrongLength);
                }
                if checksum(&out) as usize != n {
                    return Err(ApplyError::BadChecksum);
                }
                return Ok(out);
            }
            _ => return Err(ApplyError::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs made here, deltas made by Fossil itself (`fossil test-delta-create`, Fossil
    /// 2.21): see `tests/fossil_vectors.txt` for how.
    const VECTORS: &str = include_str!("../tests/fossil_vectors.txt");

    struct Vector {
        name: String,
        source: Vec<u8>,
        target: Vec<u8>,
        delta: Vec<u8>,
    }

    fn vectors() -> Vec<Vector> {
        let mut out = Vec::new();
        let mut lines = VECTORS.lines().filter(|l| !l.starts_with('#') && !l.is_empty());
        while let Some(name) = lines.next() {
            let mut field = |tag: &str| {
                let line = lines.next().expect("a vector has source, target and delta");
                hex(line.strip_prefix(tag).unwrap_or_else(|| panic!("{name}: {tag:?} expected")))
            };
            let (source, target, delta) = (field("s "), field("t "), field("d "));
            out.push(Vector { name: name.to_owned(), source, target, delta });
        }
        out
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn same_bytes_as_fossil() {
        let vectors = vectors();
        assert!(vectors.len() >= 8, "the vectors file is read");
        for Vector { name, source, target, delta } in vectors {
            assert_eq!(
                String::from_utf8_lossy(&create(&source, &target)),
                String::from_utf8_lossy(&delta),
                "vector {name}"
            );
            assert_eq!(apply(&source, &delta, target.len()).unwrap(), target, "vector {name}");
        }
    }

    #[test]
    fn round_trips() {
        let base: Vec<u8> =
            (0..3000u32).flat_map(|i| format!("{{\"id\":{i},\"v\":\"é{}\"}},", i % 7).into_bytes()).collect();
        let mut edited = base.clone();
        edited.splice(100..140, b"something else entirely, \xff\x00 bytes too".iter().copied());
        edited.truncate(edited.len() - 500);
        edited.extend_from_slice(b"tail");
        for (source, target) in [
            (&base[..], &edited[..]),
            (&edited[..], &base[..]),
            (&base[..], &base[..]),
            (b"".as_slice(), &base[..10]),
            (&base[..], b"".as_slice()),
            (&base[..16], &base[..40]),
            (&base[..17], &base[..40]),
        ] {
            let delta = create(source, target);
            assert_eq!(apply(source, &delta, target.len()).unwrap(), target);
        }
        // A small edit of a large text is a small delta.
        let delta = create(&base, &edited);
        assert!(delta.len() < 400, "{} bytes for {}", delta.len(), base.len());
    }

    #[test]
    fn apply_refuses_bad_deltas() {
        let source = b"0123456789abcdefghijklmnopqrstuvwxyz";
        let good = create(source, b"0123456789abcdefghijXYZ");
        assert!(apply(source, &good, 100).is_ok());
        assert_eq!(apply(source, &good, 5), Err(ApplyError::TooLarge));
        for bad in [
            &b""[..],
            b"N",
            b"N\n",
            b"5\n3@Z0,2:ab1;",
            b"5\n9:ab",
            b"5\n5:abcde0;",
            b"~~~~~~~~~~~~\n",
            b"3\n3!abc0;",
        ] {
            assert!(apply(source, bad, 1 << 20).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let mut corrupt = good.clone();
        let last = corrupt.len() - 2;
        corrupt[last] = if corrupt[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(apply(source, &corrupt, 100), Err(ApplyError::BadChecksum));
    }
}
