//! IPv4 header checksums (RFC 1071, incremental updates per RFC 1624).

/// Checksum of a 20-byte IPv4 header whose checksum field is zero.
#[inline(always)]
pub fn ipv4_header(header: &[u8; 20]) -> [u8; 2] {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < 20 {
        sum += u32::from(u16::from_be_bytes([header[i], header[i + 1]]));
        i += 2;
    }
    fold(sum).to_be_bytes()
}

/// The checksum after one 16-bit word of the header changed from `old` to `new`.
#[inline(always)]
pub fn replace_word(check: [u8; 2], old: u16, new: u16) -> [u8; 2] {
    let sum = u32::from(!u16::from_be_bytes(check)) + u32::from(!old) + u32::from(new);
    fold(sum).to_be_bytes()
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
