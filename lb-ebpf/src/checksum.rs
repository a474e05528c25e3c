//! IPv4 header checksums (RFC 1071, incremental updates per RFC 1624).

/// Checksum of an IPv4 header given as its ten 16-bit words (the checksum word zero).
#[inline(always)]
pub fn ipv4_header(words: [u16; 10]) -> [u8; 2] {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < 10 {
        sum += u32::from(words[i]);
        i += 1;
    }
    fold(sum).to_be_bytes()
}

/// The checksum after one 16-bit word of the header changed from `old` to `new`.
#[inline(always)]
pub fn replace_word(check: [u8; 2], old: u16, new: u16) -> [u8; 2] {
    let sum = u32::from(!u16::from_be_bytes(check)) + u32::from(!old) + u32::from(new);
    fold(sum).to_be_bytes()
}

/// The one's complement checksum of a 32-bit sum of 16-bit words.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
