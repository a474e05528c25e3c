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
    flow::{self, FlowKey, HashKey},
    hash::siphash13_words,
    userspace_pod,
};

/// The most bytes a key has.
pub const MAX_KEY_LEN: usize = 16;

/// The furthest into the UDP payload a key may start (a key must fit a datagram that is not
/// fragmented on an Ethernet path).
pub const MAX_KEY_OFFSET: u16 = 1400;

/// What a VIP's [`SessionKey`] reads.
pub mod kind {
    /// A key of the payload, digested into the flow key ([`super::session_flow`]).
    pub const PAYLOAD: u8 = 0;
    /// A QUIC server id in a short header's destination connection id (`crate::quic`).
    pub const QUIC_SERVER_ID: u8 = 1;
}

/// A VIP's key extractor, as the data plane reads it in `LB_SESSION_KEYS`: `length` bytes at
/// `offset` of the UDP payload, each combined by AND with its byte of `mask`, and what they
/// are ([`kind`]). `length` 0: none.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SessionKey {
    /// Bytes into the UDP payload, at most [`MAX_KEY_OFFSET`].
    pub offset: u16,
    /// Bytes of the key, at most [`MAX_KEY_LEN`]; 0: the VIP has no session key.
    pub length: u8,
    /// One of [`kind`].
    pub kind: u8,
    /// Combined by AND with the key's bytes; zero past `length`, so that the key's unused bytes are zero.
    pub mask: [u8; MAX_KEY_LEN],
}
assert_layout!(SessionKey, size = 20, offset = 0, length = 2, kind = 3, mask = 4);
userspace_pod!(SessionKey);

impl SessionKey {
    /// No session key: the VIP balances by the 5-tuple.
    pub const NONE: Self = Self { offset: 0, length: 0, kind: kind::PAYLOAD, mask: [0; MAX_KEY_LEN] };

    /// `length` bytes at `offset`, masked by `mask` (whose bytes past `length` are ignored).
    /// The caller keeps `offset` and `length` within their limits.
    pub const fn new(offset: u16, length: u8, mask: [u8; MAX_KEY_LEN]) -> Self {
        let mut kept = [0u8; MAX_KEY_LEN];
        let mut i = 0;
        while i < MAX_KEY_LEN && i < length as usize {
            kept[i] = mask[i];
            i += 1;
        }
        Self { offset, length, kind: kind::PAYLOAD, mask: kept }
    }

    /// A QUIC VIP's: a server id of `length` bytes at `server_id_offset` of a short header's
    /// destination connection id (which starts at the payload's second byte). The caller keeps
    /// the server id within [`crate::quic::MAX_CID_LEN`] and [`crate::quic::MAX_SERVER_ID_LEN`].
    pub const fn quic(server_id_offset: u8, length: u8) -> Self {
        let mut key = Self::new(1 + server_id_offset as u16, length, [0xff; MAX_KEY_LEN]);
        key.kind = kind::QUIC_SERVER_ID;
        key
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
        if !self.is_some() || length > MAX_KEY_LEN || self.kind != kind::PAYLOAD {
            return None;
        }
        let bytes = payload.get(start..start + length)?;
        let mut raw = [0u8; MAX_KEY_LEN];
        raw[..length].copy_from_slice(bytes);
        Some(self.masked(raw))
    }

    /// The server id of a QUIC datagram whose UDP payload is `payload`, for a VIP of kind
    /// [`kind::QUIC_SERVER_ID`]: None for a long header, or a payload that ends before the id.
    pub fn quic_server_id(&self, payload: &[u8]) -> Option<[u8; crate::quic::MAX_SERVER_ID_LEN]> {
        let (start, length) = (usize::from(self.offset), usize::from(self.length));
        if self.kind != kind::QUIC_SERVER_ID || length > crate::quic::MAX_SERVER_ID_LEN {
            return None;
        }
        if payload.first()? & crate::quic::LONG_HEADER != 0 {
            return None;
        }
        let mut id = [0u8; crate::quic::MAX_SERVER_ID_LEN];
        id[..length].copy_from_slice(payload.get(start..start + length)?);
        Some(id)
    }
}

/// Marks the digest's input, so that it never equals another hash's.
const SESSION_DOMAIN: u64 = 0x4c42_5353 << 32; // "LBSS"

/// The flow key of the session `key` of `flow`'s datagram: the key's digest under the instance's
/// secret `hash_key` in place of the client's address (4 bytes, what an IPv4 entry keeps) and
/// port (2 bytes); the VIP's side as the packet has it.
#[inline(always)]
pub fn session_flow(key: [u8; MAX_KEY_LEN], flow: &FlowKey, hash_key: &HashKey) -> FlowKey {
    let mut session = *flow;
    make_session_flow(&mut session, key, hash_key);
    session
}

/// Turns `flow` into the flow key of its datagram's session `key` in place ([`session_flow`]),
/// for the data plane, whose stack has no room for a second key.
#[inline(always)]
pub fn make_session_flow(flow: &mut FlowKey, key: [u8; MAX_KEY_LEN], hash_key: &HashKey) {
    let (mut low, mut high) = ([0u8; 8], [0u8; 8]);
    low.copy_from_slice(&key[..8]);
    high.copy_from_slice(&key[8..]);
    let words = [u64::from_le_bytes(low), u64::from_le_bytes(high), SESSION_DOMAIN];
    let d = siphash13_words(hash_key, &words).to_le_bytes();
    flow.src_addr = [d[0], d[1], d[2], d[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    flow.src_port = [d[4], d[5]];
    flow.kind = flow::kind::SESSION;
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
    fn quic_server_ids_come_from_short_headers_only() {
        // Server id of 2 bytes at byte 1 of the connection id (QUIC-LB: after its first octet).
        let spec = SessionKey::quic(1, 2);
        assert_eq!((spec.offset, spec.length, spec.kind), (2, 2, kind::QUIC_SERVER_ID));
        let short = [0x40, 0x07, 0xab, 0xcd, 0x11, 0x22];
        assert_eq!(spec.quic_server_id(&short).unwrap()[..3], [0xab, 0xcd, 0]);
        assert_eq!(spec.quic_server_id(&[0xc0, 0x07, 0xab, 0xcd]), None, "a long header goes by its 5-tuple");
        assert_eq!(spec.quic_server_id(&short[..3]), None, "too short");
        assert_eq!(spec.extract(&short), None, "not a payload key");
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
            kind: flow::kind::FIVE_TUPLE,
            _pad: [0; 1],
        };
        let secret = [1, 2];
        let session = session_flow([7; 16], &flow, &secret);
        // The same digest as a 5-tuple's address and port is still another key.
        assert_ne!(session, FlowKey { kind: flow::kind::FIVE_TUPLE, ..session });
        assert_eq!(session.v4().flow(), session, "an IPv4 session survives the IPv4 table");
        let moved = FlowKey { src_addr: [10, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], src_port: [1, 2], ..flow };
        assert_eq!(session, session_flow([7; 16], &moved, &secret), "the client's side does not count");
        assert_ne!(session, session_flow([8; 16], &flow, &secret));
        assert_ne!(session, session_flow([7; 16], &flow, &[1, 3]), "the digest is keyed");
    }
}
