//! Flows: the 5-tuple key, the flow-table value, and the flow hash.

use crate::{assert_layout, hash::siphash13_words, userspace_pod};

/// A flow's 5-tuple as the data plane sees it. IPv4 addresses take the first 4 bytes of the
/// 16-byte fields; the rest stays zero. Ports are in network byte order.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// Source (client) address, network byte order.
    pub src_addr: [u8; 16],
    /// Destination (VIP) address, network byte order.
    pub dst_addr: [u8; 16],
    /// Source port, network byte order.
    pub src_port: [u8; 2],
    /// Destination port, network byte order.
    pub dst_port: [u8; 2],
    /// IP protocol number (6 TCP, 17 UDP, ...).
    pub protocol: u8,
    /// Address family ([`crate::family`]).
    pub family: u8,
    /// What the key is of ([`kind`]): a 5-tuple, or a session (`crate::session`).
    pub kind: u8,
    /// Explicit padding, always zero: it is hashed and compared as part of the key.
    pub _pad: [u8; 1],
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
    kind = 38,
    _pad = 39
);

/// What a flow key is of ([`FlowKey::kind`]). Keys of different kinds never compare equal.
pub mod kind {
    /// A packet's 5-tuple.
    pub const FIVE_TUPLE: u8 = 0;
    /// A session of a VIP with a session key: a digest of the key in place of the client's
    /// address and port (`crate::session::session_flow`).
    pub const SESSION: u8 = 1;
}
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
            kind: kind::FIVE_TUPLE,
            _pad: [0; 1],
        }
    }

    /// The key as five little-endian 64-bit words, the input of [`flow_hash`].
    #[inline(always)]
    pub fn words(&self) -> [u64; 5] {
        // SAFETY: FlowKey is 40 bytes, 8-aligned, all bytes initialised (padding is a field).
        let raw: [u64; 5] = unsafe { core::mem::transmute_copy(self) };
        let mut words = [0u64; 5];
        let mut i = 0;
        while i < 5 {
            words[i] = u64::from_le(raw[i]);
            i += 1;
        }
        words
    }
}

/// The instance's secret key of the flow and source hashes (`crate::hash`), the same on every
/// balancer of a fleet: (k0, k1) of `SipHash`.
pub type HashKey = [u64; 2];

/// The key of an instance whose configuration names none. It is public, so it keeps flows
/// consistent across a fleet but does not hide anything from an attacker.
pub const PUBLIC_HASH_KEY: HashKey = [0x4c42_5846_6c6f_7773, 0x7075_626c_6963_6b65]; // "LBXFlows", "publicke"

/// The flow hash: chooses a flow's backend (its table slot) and varies the outer source address
/// per flow. Keyed: without `key`, nobody can tell which flows share a backend.
#[inline(always)]
pub fn flow_hash(flow: &FlowKey, key: &HashKey) -> u32 {
    fold(siphash13_words(key, &flow.words()))
}

/// Marks the source hash's input, so that it never equals a flow hash input.
const SOURCE_HASH_DOMAIN: u64 = 0x4c42_5348 << 32; // "LBSH"

/// The source hash: the client address's first `prefix_len` bits, and its family. Keyed like
/// [`flow_hash`].
#[inline(always)]
pub fn source_hash(flow: &FlowKey, prefix_len: u8, key: &HashKey) -> u32 {
    let w = flow.words();
    let mut words = [w[0], w[1], SOURCE_HASH_DOMAIN | u64::from(flow.family)];
    let mut i = 0;
    while i < 2 {
        let bits = u32::from(prefix_len).saturating_sub(64 * i as u32).min(64);
        // Words are little-endian reads of network-order bytes: mask in byte order.
        let mask_be: u64 = if bits == 0 { 0 } else { u64::MAX << (64 - bits) };
        words[i] &= u64::from_le_bytes(mask_be.to_be_bytes());
        i += 1;
    }
    fold(siphash13_words(key, &words))
}

#[inline(always)]
const fn fold(hash: u64) -> u32 {
    (hash ^ (hash >> 32)) as u32
}

/// Key of the fragment table: one fragmented datagram, as its IP header names it (RFC 791, RFC
/// 8200). Its first fragment carries the ports and finds the datagram's backend; the later ones
/// carry none and follow the first by this key.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragmentKey {
    /// Source address, network byte order (IPv4 in the first 4 bytes).
    pub src_addr: [u8; 16],
    /// Destination address, network byte order (IPv4 in the first 4 bytes).
    pub dst_addr: [u8; 16],
    /// The IPv4 identification (16 bits) or IPv6 fragment header identification.
    pub id: u32,
    /// IP protocol number.
    pub protocol: u8,
    /// Address family ([`crate::family`]).
    pub family: u8,
    /// Explicit padding, always zero: it is part of the key the map compares.
    pub _pad: [u8; 2],
}
assert_layout!(FragmentKey, size = 40, src_addr = 0, dst_addr = 16, id = 32, protocol = 36, family = 37, _pad = 38);

/// Where a fragmented datagram goes: its first fragment's backend.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragmentOwner {
    /// Backend id the first fragment went to.
    pub backend: u32,
    /// The flow's hash (the outer source of the first fragment's encapsulation).
    pub hash: u32,
    /// The VIP tag of the backend when the first fragment went there (see [`FlowState::vip_tag`]).
    pub vip_tag: u32,
}
assert_layout!(FragmentOwner, size = 12, backend = 0, hash = 4, vip_tag = 8);
userspace_pod!(FragmentKey, FragmentOwner);

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

/// Key of the IPv4 flow table: the 5-tuple in 16 bytes, where [`FlowKey`] takes 40 for either
/// family. A smaller key hashes and compares faster, and the table costs less memory per flow.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKeyV4 {
    /// Source (client) address, network byte order.
    pub src_addr: [u8; 4],
    /// Destination (VIP) address, network byte order.
    pub dst_addr: [u8; 4],
    /// Source port, network byte order.
    pub src_port: [u8; 2],
    /// Destination port, network byte order.
    pub dst_port: [u8; 2],
    /// IP protocol number.
    pub protocol: u8,
    /// As [`FlowKey::kind`].
    pub kind: u8,
    /// Explicit padding, always zero: it is part of the key the map compares.
    pub _pad: [u8; 2],
}
assert_layout!(
    FlowKeyV4,
    size = 16,
    src_addr = 0,
    dst_addr = 4,
    src_port = 8,
    dst_port = 10,
    protocol = 12,
    kind = 13,
    _pad = 14
);
userspace_pod!(FlowKeyV4);

impl FlowKey {
    /// The IPv4 flow table's key of this (IPv4) flow.
    #[inline(always)]
    pub fn v4(&self) -> FlowKeyV4 {
        let (s, d) = (self.src_addr, self.dst_addr);
        FlowKeyV4 {
            src_addr: [s[0], s[1], s[2], s[3]],
            dst_addr: [d[0], d[1], d[2], d[3]],
            src_port: self.src_port,
            dst_port: self.dst_port,
            protocol: self.protocol,
            kind: self.kind,
            _pad: [0; 2],
        }
    }
}

impl FlowKeyV4 {
    /// The flow as [`FlowKey`], the form every other part uses.
    pub fn flow(&self) -> FlowKey {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src[..4].copy_from_slice(&self.src_addr);
        dst[..4].copy_from_slice(&self.dst_addr);
        FlowKey {
            src_addr: src,
            dst_addr: dst,
            src_port: self.src_port,
            dst_port: self.dst_port,
            protocol: self.protocol,
            family: crate::family::IPV4,
            kind: self.kind,
            _pad: [0; 1],
        }
    }
}

/// Flow-table packet times are kept in ticks of 2^20 ns (about 1.05 ms) in 32 bits, which wrap
/// after about 52 days: far beyond any idle timeout, and half the bytes of nanoseconds.
pub const FLOW_CLOCK_SHIFT: u32 = 20;

/// `ns` (of `bpf_ktime_get_coarse_ns`, `CLOCK_MONOTONIC`) in flow-clock ticks.
#[inline(always)]
pub const fn flow_clock(ns: u64) -> u32 {
    (ns >> FLOW_CLOCK_SHIFT) as u32
}

/// Flow-table value: where an established flow goes. 16 bytes, so an IPv4 flow costs at most
/// 100 bytes of kernel memory.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowState {
    /// Backend id (index into the backends map; ids stay below
    /// [`crate::capacity::MAX_BACKENDS`]).
    pub backend: u16,
    /// One of [`stage`].
    pub stage: u8,
    /// [`FLOW_TRACKS_TIME`] or not.
    pub flags: u8,
    /// The flow's [`flow_hash`], kept so that packets of established flows need not rehash.
    pub hash: u32,
    /// Last packet time in [`flow_clock`] ticks, of UDP flows and of TCP flows of
    /// least-connections VIPs (other TCP flows: their first packet's): UDP flows idle longer than
    /// their timeout are rescheduled, and idle flows stop counting as active.
    pub last_seen: u32,
    /// The tag of the VIP the flow was scheduled for (`crate::vip::VipKey::tag`), which its
    /// backend's record must still carry.
    pub vip_tag: u32,
}
assert_layout!(FlowState, size = 16, backend = 0, stage = 2, flags = 3, hash = 4, last_seen = 8, vip_tag = 12);

/// Flag: the flow's packets keep `last_seen` (UDP, and TCP of least-connections VIPs); other
/// flows skip the clock.
pub const FLOW_TRACKS_TIME: u8 = 1;

impl FlowState {
    /// The state of a flow sent to `backend` whose last packet came at `now_ns` (coarse clock).
    #[inline(always)]
    pub const fn new(backend: u16, hash: u32, now_ns: u64, stage: u8, flags: u8, vip_tag: u32) -> Self {
        Self { backend, stage, flags, hash, last_seen: flow_clock(now_ns), vip_tag }
    }

    /// Whether the flow's packets keep `last_seen` ([`FLOW_TRACKS_TIME`]).
    #[inline(always)]
    pub const fn tracks_time(&self) -> bool {
        self.flags & FLOW_TRACKS_TIME != 0
    }

    /// How long before `now_ns` the flow's last packet came, to a tick; 0 for a packet time
    /// after `now_ns` (another CPU's, written meanwhile).
    #[inline(always)]
    pub const fn idle_ns(&self, now_ns: u64) -> u64 {
        let ticks = flow_clock(now_ns).wrapping_sub(self.last_seen);
        if ticks > u32::MAX / 2 { 0 } else { (ticks as u64) << FLOW_CLOCK_SHIFT }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::family;

    const KEY: HashKey = [0x0011_2233_4455_6677, 0x8899_aabb_ccdd_eeff];

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
        let got = [tcp4, udp4, tcp6, FlowKey::default()].map(|f| flow_hash(&f, &KEY));
        assert_eq!(got, FLOW_HASH_VECTORS, "the flow hash changed: this would move every flow of a fleet");
        let public = [tcp4, udp4, tcp6, FlowKey::default()].map(|f| flow_hash(&f, &PUBLIC_HASH_KEY));
        assert_eq!(public, PUBLIC_KEY_VECTORS, "the flow hash changed: this would move every flow of a fleet");
    }

    #[test]
    fn another_key_gives_other_hashes() {
        let flow = FlowKey::new(family::IPV4, 6, v4([198, 18, 0, 10]), 40000, v4([198, 18, 1, 1]), 80);
        let other = [KEY[0], KEY[1] ^ 1];
        assert_ne!(flow_hash(&flow, &KEY), flow_hash(&flow, &other));
        assert_ne!(source_hash(&flow, 32, &KEY), source_hash(&flow, 32, &other));
        assert_ne!(flow_hash(&flow, &KEY), source_hash(&flow, 128, &KEY));
    }

    const FLOW_HASH_VECTORS: [u32; 4] = [2_617_499_010, 130_941_144, 3_887_547_702, 3_844_896_802];
    const PUBLIC_KEY_VECTORS: [u32; 4] = [4_113_046_089, 3_932_317_530, 2_885_209_490, 1_327_155_280];

    #[test]
    fn source_hash_sees_only_the_prefix() {
        let a = FlowKey::new(family::IPV4, 6, v4([198, 18, 7, 10]), 40000, v4([198, 18, 1, 1]), 80);
        let same_client = FlowKey::new(family::IPV4, 17, v4([198, 18, 7, 10]), 1234, v4([198, 18, 1, 2]), 53);
        let same_24 = FlowKey::new(family::IPV4, 6, v4([198, 18, 7, 99]), 40000, v4([198, 18, 1, 1]), 80);
        assert_eq!(source_hash(&a, 32, &KEY), source_hash(&same_client, 32, &KEY));
        assert_ne!(source_hash(&a, 32, &KEY), source_hash(&same_24, 32, &KEY));
        assert_eq!(source_hash(&a, 24, &KEY), source_hash(&same_24, 24, &KEY));
        assert_eq!(source_hash(&a, 0, &KEY), source_hash(&same_24, 0, &KEY));
        let mut b6 = [0u8; 16];
        b6[0] = 0xfd;
        b6[7] = 1;
        b6[15] = 0x10;
        let mut c6 = b6;
        c6[15] = 0x99;
        let (x, y) = (FlowKey::new(family::IPV6, 6, b6, 1, b6, 80), FlowKey::new(family::IPV6, 6, c6, 2, b6, 80));
        assert_eq!(source_hash(&x, 64, &KEY), source_hash(&y, 64, &KEY));
        assert_ne!(source_hash(&x, 128, &KEY), source_hash(&y, 128, &KEY));
        assert_eq!(source_hash(&a, 32, &KEY), 2_888_682_122, "the source hash changed: it would move every client");
    }

    #[test]
    fn ipv4_keys_carry_the_whole_flow() {
        let flow = FlowKey::new(family::IPV4, 17, v4([198, 18, 0, 10]), 40000, v4([198, 18, 1, 1]), 53);
        let key = flow.v4();
        assert_eq!(key.src_addr, [198, 18, 0, 10]);
        assert_eq!(key.dst_port, 53u16.to_be_bytes());
        assert_eq!(key.flow(), flow);
    }

    #[test]
    fn idle_time_is_kept_to_a_tick_and_survives_the_clock_wrapping() {
        let tick = 1u64 << FLOW_CLOCK_SHIFT;
        let seen = FlowState::new(1, 0, 5_000 * tick + 7, stage::ACTIVE, FLOW_TRACKS_TIME, 0);
        assert_eq!(seen.idle_ns(5_000 * tick + 9), 0);
        assert_eq!(seen.idle_ns(5_030 * tick), 30 * tick);
        assert_eq!(seen.idle_ns(4_000 * tick), 0, "a packet time after now is no idle time");
        // Ticks wrap after 2^32 of them; idle times across the wrap stay right.
        let wraps = (1u64 << 32) * tick;
        let late = FlowState::new(1, 0, wraps - 2 * tick, stage::ACTIVE, FLOW_TRACKS_TIME, 0);
        assert_eq!(late.idle_ns(wraps + 3 * tick), 5 * tick);
    }

    #[test]
    fn any_field_changes_the_hash() {
        let base = FlowKey::new(family::IPV4, 6, v4([198, 18, 0, 10]), 40000, v4([198, 18, 1, 1]), 80);
        let mut other = base;
        other.src_port = 40001u16.to_be_bytes();
        assert_ne!(flow_hash(&base, &KEY), flow_hash(&other, &KEY));
        let mut other = base;
        other.protocol = 17;
        assert_ne!(flow_hash(&base, &KEY), flow_hash(&other, &KEY));
        let mut other = base;
        other.dst_addr[3] = 2;
        assert_ne!(flow_hash(&base, &KEY), flow_hash(&other, &KEY));
    }
}
