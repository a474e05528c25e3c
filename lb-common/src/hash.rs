//! The project's hashes, used in the XDP program and in userspace alike:
//! - `MurmurHash3` (x86, 32-bit) over 32-bit words, for what no client chooses: Maglev
//!   permutations of backend addresses, VIP tags.
//! - SipHash-1-3 over 64-bit words with a secret 128-bit key, for what clients choose: the flow
//!   and source hashes that pick a new flow's backend. Without the key an attacker cannot aim
//!   flows at one backend; `MurmurHash3` has seed-independent collisions, so a secret seed would
//!   not do.
//!
//! Outputs are part of the wire contract of a fleet: a changed hash (or key) moves every new flow
//! in the middle of a rolling upgrade. The test vectors below pin both.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// `MurmurHash3_x86_32` of `words` (each word read as little-endian bytes), with `seed`.
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

/// SipHash-1-3 of `words` (each word the little-endian reading of 8 message bytes) with key
/// `key` (k0, k1): the same value as SipHash-1-3 over the `8 * N` bytes.
#[inline(always)]
pub fn siphash13_words<const N: usize>(key: &[u64; 2], words: &[u64; N]) -> u64 {
    let mut v = [
        key[0] ^ 0x736f_6d65_7073_6575,
        key[1] ^ 0x646f_7261_6e64_6f6d,
        key[0] ^ 0x6c79_6765_6e65_7261,
        key[1] ^ 0x7465_6462_7974_6573,
    ];
    let mut i = 0;
    while i < N {
        v[3] ^= words[i];
        sip_round(&mut v);
        v[0] ^= words[i];
        i += 1;
    }
    // The last block: no bytes left over, the message length in its top byte.
    let last = ((8 * N) as u64) << 56;
    v[3] ^= last;
    sip_round(&mut v);
    v[0] ^= last;
    v[2] ^= 0xff;
    sip_round(&mut v);
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published algorithm as the `siphasher` crate implements it, over the same bytes.
    #[test]
    fn siphash13_matches_the_reference() {
        use core::hash::Hasher as _;
        let key = [0x0706_0504_0302_0100u64, 0x0f0e_0d0c_0b0a_0908];
        let words = [0x1122_3344_5566_7788u64, 0, u64::MAX, 0x0123_4567_89ab_cdef, 42];
        let mut bytes = [0u8; 40];
        for (i, w) in words.iter().enumerate() {
            bytes[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
        }
        let mut reference = siphasher::sip::SipHasher13::new_with_keys(key[0], key[1]);
        reference.write(&bytes);
        assert_eq!(siphash13_words(&key, &words), reference.finish());
        let mut empty = siphasher::sip::SipHasher13::new_with_keys(key[0], key[1]);
        empty.write(&[]);
        assert_eq!(siphash13_words::<0>(&key, &[]), empty.finish());
    }

    /// Reference values of `MurmurHash3_x86_32` (the published algorithm, byte input, little-endian words).
    #[test]
    fn matches_reference_murmur3() {
        assert_eq!(murmur3_words::<0>(&[], 0), 0);
        assert_eq!(murmur3_words::<0>(&[], 1), 0x514e_28b7);
        // "abcd" = 0x64636261 little-endian, seed 0x9747b28c.
        assert_eq!(murmur3_words(&[0x6463_6261], 0x9747_b28c), 0xf047_8627);
        // The 4 bytes 0x00,0x00,0x00,0x00 with seed 0.
        assert_eq!(murmur3_words(&[0], 0), 0x2362_f9de);
    }
}
