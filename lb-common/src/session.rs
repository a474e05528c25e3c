//! Session keys: a UDP VIP may choose and remember backends by bytes of the datagram's payload
//! (the session or connection id of a game's or a device's protocol) instead of the
//! 5-tuple, so that a client whose NAT changes its source port, or who moves to another
//! address, stays on its backend.
//!
//! A 48-bit keyed digest of the key takes the place of the client's address and port in the
//! flow key ([`session_flow`]), whose kind says it is a session's: the flow hash, hence the
//! Maglev slot and the backend, and the flow-table entry depend on the key alone, on every
//! balancer of a fleet alike. The entry fits either family's flow table, and the key keeps the
//! packet's family, so the fast path takes the same branches for a session as for a 5-tuple
//! (which keeps the verifier's work within its budget). Two sessions share an entry only if
//! their digests collide: among a million at once, the chance that any two do is about 0.2%,
//! and such a pair is served by one backend. A packet too short for its VIP's key is balanced
//! by its 5-tuple, and counted.

use crate::{
    assert_layout,
    flow::{FlowKey, HashKey, kind},
    hash::siphash13_words,
    userspace_pod,
};

/// The most bytes a key has.
pub const MAX_KEY_LEN: usize = 16;

/// The furthest into the UDP payload a key may start (a key must fit a datagram that is not
/// fragmented on an Ethernet path).
pub const MAX_KEY_OFFSET: u16 = 1400;

/// A VIP's key extractor, as the data plane reads it in the VIP's record: `length` bytes at
/// `offset` of the UDP payload, each combined by AND with its byte of `mask`. `length` 0: none.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SessionKey {
    /// Bytes into the UDP payload, at most [`MAX_KEY_OFFSET`].
    pub offset: u16,
    /// Bytes of the key, at most [`MAX_KEY_LEN`]; 0: the VIP has no session key.
    pub length: u8,
    /// Explicit padding, always zero.
    pub _pad: u8,
    /// Combined by AND with the key's bytes; zero past `length`, so that the key's unused bytes are zero.
    pub mask: [u8; MAX_KEY_LEN],
}
assert_layout!(SessionKey, size = 20, offset = 0, length = 2, _pad = 3, mask = 4);
userspace_pod!(SessionKey);

impl SessionKey {
    /// No session key: the VIP balances by the 5-tuple.
    pub const NONE: Self = Self { offset: 0, length: 0, _pad: 0, mask: [0; MAX_KEY_LEN] };

    /// `length` bytes at `offset`, masked by `mask` (whose bytes past `length` are ignored).
    /// The caller keeps `offset` and `length` within their limits.
    pub const fn new(offset: u16, length: u8, mask: [u8; MAX_KEY_LEN]) -> Self {
        let mut kept = [0u8; MAX_KEY_LEN];
        let mut i = 0;
        while i < MAX_KEY_LEN && i < length as usize {
            kept[i] = mask[i];
            i += 1;
        }
        Self { offset, length, _pad: 0, mask: kept }
    }

    /// Whether the VIP has a session key.
    #[inline(always)]
    pub const fn is_some(&self) -> bool {
        self.length != 0
    }

    /// `raw` (the key's bytes as read, zero past `length`) masked.
    #[inline(always)]
    pub fn masked(&self, mut raw: [u8; MAX_KEY_LEN]) -> [u8; MAX_KEY_LEN] {
        let mut i = 0;
        while i < MAX_KEY_LEN {
            raw[i] &= self.mask[i];
            i += 1;
        }
        raw
    }

    /// The key of a datagram whose UDP payload is `payload`, if it is long enough: what the data
    /// plane reads, for `lb trace` and the tests.
    pub fn extract(&self, payload: &[u8]) -> Option<[u8; MAX_KEY_LEN]> {
        let (start, length) = (usize::from(self.offset), usize::from(self.length));
        if !self.is_some() || length > MAX_KEY_LEN {
            return None;
        }
        let bytes = payload.get(start..start + length)?;
        let mut raw = [0u8; MAX_KEY_LEN];
        raw[..length].copy_from_slice(bytes);
        Some(self.masked(raw))
    }
}

/// Marks the digest's input, so that it never equals another hash's.
const SESSION_DOMAIN: u64 = 0x4c42_5353 << 32; // "LBSS"

/// The flow key of the session `key` of `flow`'s datagram: the key's digest under the instance's
/// secret `hash_key` in place of the client's address (4 bytes, what an IPv4 entry keeps) and
/// port (2 bytes); the VIP's side as the packet has it.
#[inline(always)]
pub fn session_flow(key: [u8; MAX_KEY_LEN], flow: &FlowKey, hash_key: &HashKey) -> FlowKey {
    let (mut low, mut high) = ([0u8; 8], [0u8; 8]);
    low.copy_from_slice(&key[..8]);
    high.copy_from_slice(&key[8..]);
    let words = [u64::from_le_bytes(low), u64::from_le_bytes(high), SESSION_DOMAIN];
    let d = siphash13_words(hash_key, &words).to_le_bytes();
    let mut src_addr = [0u8; 16];
    src_addr[..4].copy_from_slice(&d[..4]);
    FlowKey {
        src_addr,
        dst_addr: flow.dst_addr,
        src_port: [d[4], d[5]],
        dst_port: flow.dst_port,
        protocol: flow.protocol,
        family: flow.family,
        kind: kind::SESSION,
        _pad: [0; 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_masked_and_short_payloads_have_none() {
        let spec = SessionKey::new(2, 4, [0xff, 0x0f, 0xff, 0xff, 0xaa, 0xaa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(spec.mask[4..6], [0, 0], "mask bytes past the length are dropped");
        let key = spec.extract(&[9, 9, 0x12, 0x34, 0x56, 0x78, 0x9a]).unwrap();
        assert_eq!(key[..5], [0x12, 0x04, 0x56, 0x78, 0]);
        assert_eq!(spec.extract(&[9, 9, 0x12, 0x34, 0x56]), None, "one byte short");
        assert_eq!(SessionKey::NONE.extract(&[1, 2, 3]), None);
    }

    #[test]
    fn a_session_flow_never_equals_a_five_tuple() {
        let flow = FlowKey {
            src_addr: [198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst_addr: [198, 18, 100, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            src_port: [0x9c, 0x40],
            dst_port: [0, 53],
            protocol: 17,
            family: crate::family::IPV4,
            kind: kind::FIVE_TUPLE,
            _pad: [0; 1],
        };
        let secret = [1, 2];
        let session = session_flow([7; 16], &flow, &secret);
        // The same digest as a 5-tuple's address and port is still another key.
        assert_ne!(session, FlowKey { kind: kind::FIVE_TUPLE, ..session });
        assert_eq!(session.v4().flow(), session, "an IPv4 session survives the IPv4 table");
        let moved = FlowKey { src_addr: [10, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], src_port: [1, 2], ..flow };
        assert_eq!(session, session_flow([7; 16], &moved, &secret), "the client's side does not count");
        assert_ne!(session, session_flow([8; 16], &flow, &secret));
        assert_ne!(session, session_flow([7; 16], &flow, &[1, 3]), "the digest is keyed");
    }
}
