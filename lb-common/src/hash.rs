//! The one hash of the project: MurmurHash3 (x86, 32-bit) over 32-bit words.
//!
//! It is used for flow hashing and for Maglev permutations, in the XDP program and in userspace
//! alike. Its output is part of the wire contract of a fleet: a changed hash moves every flow in
//! the middle of a rolling upgrade. The test vectors below pin it.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// MurmurHash3_x86_32 of `words` (each word read as little-endian bytes), with `seed`.
#[inline(always)]
pub fn murmur3_words<const N: usize>(words: &[u32; N], seed: u32) -> u32 {
    let mut h = seed;
    let mut i = 0;
    while i < N {
        let mut k = words[i];
        k = k.wrapping_mul(C1);
        k = k.rotate_left(15);
        k = k.wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13);
        h = h.wrapping_mul(5).wrapping_add(0xe654_6b64);
        i += 1;
    }
    h ^= (N as u32) * 4;
    fmix32(h)
}

/// Murmur3's finalizer: every input bit affects every output bit.
#[inline(always)]
pub const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Reads `N` little-endian words out of `bytes` (which must hold `4 * N` bytes).
#[inline(always)]
pub fn le_words<const N: usize>(bytes: &[u8]) -> [u32; N] {
    let mut words = [0u32; N];
    let mut i = 0;
    while i < N {
        let b = 4 * i;
        words[i] = u32::from_le_bytes([bytes[b], bytes[b + 1], bytes[b + 2], bytes[b + 3]]);
        i += 1;
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values of MurmurHash3_x86_32 (the published algorithm, byte input, little-endian words).
    #[test]
    fn matches_reference_murmur3() {
        assert_eq!(murmur3_words::<0>(&[], 0), 0);
        assert_eq!(murmur3_words::<0>(&[], 1), 0x514e_28b7);
        // "abcd" = 0x64636261 little-endian, seed 0x9747b28c.
        assert_eq!(murmur3_words(&[0x6463_6261], 0x9747_b28c), 0xf0478627);
        // The 4 bytes 0x00,0x00,0x00,0x00 with seed 0.
        assert_eq!(murmur3_words(&[0], 0), 0x2362_f9de);
    }
}
