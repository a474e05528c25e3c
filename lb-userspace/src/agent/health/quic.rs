//! The `quic` check: a QUIC long header of a version no server speaks, padded to the 1200 bytes
//! of a client's first datagram, which a QUIC server answers with a Version Negotiation packet
//! (RFC 9000 §6 and §17.2.1). That shows its QUIC stack reads and answers packets on the port,
//! with no handshake, no certificate and no connection state on either side. Servers drop such a
//! packet when it is shorter (§5.2.2), hence the padding.

/// The probe's version: of the form `0x?a?a?a?a` that RFC 9000 §15 reserves for forcing version
/// negotiation, so no server ever speaks it.
pub const PROBE_VERSION: u32 = 0x1a2a_3a4a;
/// The probe's length: the smallest datagram a server answers an unknown version in.
pub const PROBE_LEN: usize = 1200;
/// The probe's destination and source connection ids; a Version Negotiation packet echoes them,
/// swapped, which tells its answer from a stray packet.
const DESTINATION_CID: [u8; 8] = *b"lb-probe";
const SOURCE_CID: [u8; 8] = *b"lb-check";

/// The probe datagram's payload.
pub const PROBE: [u8; PROBE_LEN] = probe();

const fn probe() -> [u8; PROBE_LEN] {
    let mut p = [0u8; PROBE_LEN];
    // Long header, fixed bit; the type bits mean nothing in an unknown version.
    p[0] = 0xc0;
    let version = PROBE_VERSION.to_be_bytes();
    let mut i = 0;
    while i < 4 {
        p[1 + i] = version[i];
        i += 1;
    }
    p[5] = DESTINATION_CID.len() as u8;
    p[14] = SOURCE_CID.len() as u8;
    let mut i = 0;
    while i < 8 {
        p[6 + i] = DESTINATION_CID[i];
        p[15 + i] = SOURCE_CID[i];
        i += 1;
    }
    // The rest stays zero: padding.
    p
}

/// Whether `reply` is a Version Negotiation packet answering [`PROBE`]: a long header of version
/// 0, the probe's ids swapped, and at least one 4-byte version.
pub fn answers(reply: &[u8]) -> bool {
    let Some((&first, rest)) = reply.split_first() else { return false };
    let Some((version, rest)) = rest.split_first_chunk::<4>() else { return false };
    let Some((destination, rest)) = connection_id(rest) else { return false };
    let Some((source, versions)) = connection_id(rest) else { return false };
    first & 0x80 != 0
        && *version == [0; 4]
        && destination == SOURCE_CID
        && source == DESTINATION_CID
        && !versions.is_empty()
        && versions.len() % 4 == 0
}

/// A length-prefixed connection id at the start of `bytes`, and what follows it.
fn connection_id(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = bytes.split_first()?;
    (rest.len() >= usize::from(len)).then(|| rest.split_at(usize::from(len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Version Negotiation packet as a server builds it for [`PROBE`]: the client's ids swapped,
    /// then the versions it speaks.
    fn negotiation(first: u8, version: [u8; 4], versions: &[u32]) -> Vec<u8> {
        let mut v = vec![first];
        v.extend_from_slice(&version);
        v.push(8);
        v.extend_from_slice(&SOURCE_CID);
        v.push(8);
        v.extend_from_slice(&DESTINATION_CID);
        for version in versions {
            v.extend_from_slice(&version.to_be_bytes());
        }
        v
    }

    #[test]
    fn the_probe_is_a_padded_long_header_of_a_reserved_version() {
        let p = PROBE;
        assert_eq!(p[0] & 0xc0, 0xc0);
        assert_eq!(&p[1..5], &[0x1a, 0x2a, 0x3a, 0x4a]);
        // Reserved: every byte's low nibble is 0xa.
        assert!(PROBE_VERSION.to_be_bytes().iter().all(|b| b & 0x0f == 0x0a));
        assert_eq!((p[5], &p[6..14], p[14], &p[15..23]), (8, &b"lb-probe"[..], 8, &b"lb-check"[..]));
    }

    #[test]
    fn a_version_negotiation_answers_it() {
        // The server picks the first byte's other bits at random.
        assert!(answers(&negotiation(0x80, [0; 4], &[1])));
        assert!(answers(&negotiation(0xd7, [0; 4], &[1, 0x6b33_43cf, 0x0a0a_0a0a])));
    }

    #[test]
    fn anything_else_does_not() {
        assert!(!answers(&[]));
        assert!(!answers(&negotiation(0x40, [0; 4], &[1])), "a short header");
        assert!(!answers(&negotiation(0x80, [0, 0, 0, 1], &[1])), "a packet of version 1");
        assert!(!answers(&negotiation(0x80, [0; 4], &[])), "no version offered");
        let mut odd = negotiation(0x80, [0; 4], &[1]);
        odd.pop();
        assert!(!answers(&odd), "a version cut short");
        let mut other = negotiation(0x80, [0; 4], &[1]);
        other[6] ^= 1;
        assert!(!answers(&other), "another client's ids");
        assert!(!answers(&negotiation(0x80, [0; 4], &[1])[..10]), "cut inside the ids");
    }
}
