//! Flows: the 5-tuple key, the flow-table value, and the flow hash.

use crate::{assert_layout, hash::murmur3_words, userspace_pod};

/// Seed of the flow hash. Part of the fleet contract (see [`crate::hash`]).
pub const FLOW_HASH_SEED: u32 = 0x4c42_5846; // "LBXF"

/// A flow's 5-tuple as the data plane sees it. IPv4 addresses take the first 4 bytes of the
/// 16-byte fields; the rest stays zero. Ports are in network byte order.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub protocol: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
assert_layout!(
    FlowKey,
    size = 40,
    src_addr = 0,
    dst_addr = 16,
    src_port = 32,
    dst_port = 34,
    protocol = 36,
    family = 37,
    _pad = 38
);
userspace_pod!(FlowKey, FlowState);

impl FlowKey {
    /// A key with its padding zeroed (the padding is hashed and compared as part of the key).
    #[inline(always)]
    pub const fn new(
        family: u8,
        protocol: u8,
        src_addr: [u8; 16],
        src_port: u16,
        dst_addr: [u8; 16],
        dst_port: u16,
    ) -> Self {
        Self {
            src_addr,
            dst_addr,
            src_port: src_port.to_be_bytes(),
            dst_port: dst_port.to_be_bytes(),
            protocol,
            family,
            _pad: [0; 2],
        }
    }

    /// The key as ten little-endian words, the input of [`flow_hash`].
    #[inline(always)]
    pub fn words(&self) -> [u32; 10] {
        // SAFETY: FlowKey is 40 bytes, 8-aligned, all bytes initialised (padding is a field).
        let raw: [u32; 10] = unsafe { core::mem::transmute_copy(self) };
        let mut words = [0u32; 10];
        let mut i = 0;
        while i < 10 {
            words[i] = u32::from_le(raw[i]);
            i += 1;
        }
        words
    }
}

/// The flow hash: chooses a flow's Maglev slot and varies the outer source address per flow.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    murmur3_words(&key.words(), FLOW_HASH_SEED)
}

/// Seed of the source hash (client address only).
pub const SOURCE_HASH_SEED: u32 = 0x4c42_5348; // "LBSH"

/// The source hash: the client address's first `prefix_len` bits, and its family.
#[inline(always)]
pub fn source_hash(key: &FlowKey, prefix_len: u8) -> u32 {
    let w = key.words();
    let mut words = [w[0], w[1], w[2], w[3], u32::from(key.family)];
    let mut i = 0;
    while i < 4 {
        let bits = (prefix_len as u32).saturating_sub(32 * i as u32).min(32);
        // Words are little-endian reads of network-order bytes: mask in byte order.
        let mask_be: u32 = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
        words[i] &= u32::from_le_bytes(mask_be.to_be_bytes());
        i += 1;
    }
    murmur3_words(&words, SOURCE_HASH_SEED)
}

/// Where a flow stands in its backend's count of active flows (`FlowState::stage`), which the
/// least-connections scheduler compares.
pub mod stage {
    /// Not counted yet; the flow's next packet that is neither SYN nor FIN/RST makes it active.
    /// A TCP flow's first packet was seen (a SYN, or a packet of a connection first seen
    /// mid-stream), no second one yet, so spoofed packets without a conversation (SYN or ACK
    /// floods) never inflate a backend's count; or the flow's backend went away and no other was
    /// found. A SYN retransmitted in this stage keeps the backend of the first one.
    pub const OPENING: u8 = 0;
    /// Counted as one active flow of its backend.
    pub const ACTIVE: u8 = 1;
    /// The client sent FIN or RST: no longer counted; later packets still reach the backend.
    pub const ENDED: u8 = 2;
}

/// Flow-table value: where an established flow goes.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowState {
    /// Last packet time (`bpf_ktime_get_coarse_ns`) of UDP flows and of TCP flows of
    /// least-connections VIPs (other TCP flows: their first packet's): UDP flows idle longer than
    /// their timeout are rescheduled, and idle flows stop counting as active.
    pub last_seen_ns: u64,
    /// Backend id (index into the backends map).
    pub backend: u32,
    /// The flow's [`flow_hash`], kept so that packets of established flows need not rehash.
    pub hash: u32,
    /// One of [`stage`].
    pub stage: u8,
    /// [`FLOW_TRACKS_TIME`] or not.
    pub flags: u8,
    pub _pad: [u8; 2],
    /// The tag of the VIP the flow was scheduled for (`crate::vip::VipKey::tag`), which its
    /// backend's record must still carry.
    pub vip_tag: u32,
}
assert_layout!(
    FlowState,
    size = 24,
    last_seen_ns = 0,
    backend = 8,
    hash = 12,
    stage = 16,
    flags = 17,
    _pad = 18,
    vip_tag = 20
);

/// Flag: the flow's packets keep `last_seen_ns` (UDP, and TCP of least-connections VIPs); other
/// flows skip the clock.
pub const FLOW_TRACKS_TIME: u8 = 1;

impl FlowState {
    #[inline(always)]
    pub const fn new(backend: u32, hash: u32, last_seen_ns: u64, stage: u8, flags: u8, vip_tag: u32) -> Self {
        Self { last_seen_ns, backend, hash, stage, flags, _pad: [0; 2], vip_tag }
    }

    #[inline(always)]
    pub const fn tracks_time(&self) -> bool {
        self.flags & FLOW_TRACKS_TIME != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    /// Pins the flow hash: these values must never change between releases.
    #[test]
    fn flow_hash_test_vectors() {
        let tcp4 = FlowKey::new(family::IPV4, 6, v4([198, 18, 0, 10]), 40000, v4([198, 18, 1, 1]), 80);
        let udp4 = FlowKey::new(family::IPV4, 17, v4([198, 18, 0, 11]), 5353, v4([198, 18, 1, 2]), 53);
        let mut a6 = [0u8; 16];
        a6[0] = 0xfd;
        a6[15] = 0x10;
        let mut b6 = [0u8; 16];
        b6[0] = 0xfd;
        b6[15] = 0x01;
        let tcp6 = FlowKey::new(family::IPV6, 6, a6, 50000, b6, 443);
        let got = [flow_hash(&tcp4), flow_hash(&udp4), flow_hash(&tcp6), flow_hash(&FlowKey::default())];
        assert_eq!(got, FLOW_HASH_VECTORS, "the flow hash changed: this would move every flow of a fleet");
    }

    const FLOW_HASH_VECTORS: [u32; 4] = [1_787_808_412, 4_021_127_563, 2_098_962_318, 1_632_371_310];

    #[test]
    fn source_hash_sees_only_the_prefix() {
        let a = FlowKey::new(family::IPV4, 6, v4([198, 18, 7, 10]), 40000, v4([198, 18, 1, 1]), 80);
        let same_client = FlowKey::new(family::IPV4, 17, v4([198, 18, 7, 10]), 1234, v4([198, 18, 1, 2]), 53);
        let same_24 = FlowKey::new(family::IPV4, 6, v4([198, 18, 7, 99]), 40000, v4([198, 18, 1, 1]), 80);
        assert_eq!(source_hash(&a, 32), source_hash(&same_client, 32));
        assert_ne!(source_hash(&a, 32), source_hash(&same_24, 32));
        assert_eq!(source_hash(&a, 24), source_hash(&same_24, 24));
        assert_eq!(source_hash(&a, 0), source_hash(&same_24, 0));
        let mut b6 = [0u8; 16];
        b6[0] = 0xfd;
        b6[7] = 1;
        b6[15] = 0x10;
        let mut c6 = b6;
        c6[15] = 0x99;
        let (x, y) = (FlowKey::new(family::IPV6, 6, b6, 1, b6, 80), FlowKey::new(family::IPV6, 6, c6, 2, b6, 80));
        assert_eq!(source_hash(&x, 64), source_hash(&y, 64));
        assert_ne!(source_hash(&x, 128), source_hash(&y, 128));
        assert_eq!(source_hash(&a, 32), 2_185_216_981, "the source hash changed: it would move every client");
    }

    #[test]
    fn any_field_changes_the_hash() {
        let base = FlowKey::new(family::IPV4, 6, v4([198, 18, 0, 10]), 40000, v4([198, 18, 1, 1]), 80);
        let mut other = base;
        other.src_port = 40001u16.to_be_bytes();
        assert_ne!(flow_hash(&base), flow_hash(&other));
        let mut other = base;
        other.protocol = 17;
        assert_ne!(flow_hash(&base), flow_hash(&other));
        let mut other = base;
        other.dst_addr[3] = 2;
        assert_ne!(flow_hash(&base), flow_hash(&other));
    }
}
