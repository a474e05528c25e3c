//! Instance-wide data plane settings, written by the agent into a one-entry array map.

use crate::{assert_layout, userspace_pod};

/// Instance-wide data plane settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DataplaneConfig {
    /// UDP flow-table entries idle longer than this are rescheduled as new flows.
    pub udp_idle_timeout_ns: u64,
    /// Outer IPv6 source prefix; the low `encap_src_v6_host_bits` bits come from the flow hash.
    pub encap_src_v6: [u8; 16],
    /// Outer IPv4 source prefix; the low `encap_src_v4_host_bits` bits come from the flow hash.
    pub encap_src_v4: [u8; 4],
    /// Largest IP packet (outer header included) the balancer sends; bigger ones are dropped as too big.
    pub mtu: u16,
    /// Host bits of the IPv4 encapsulation source that vary per flow (0..=16).
    pub encap_src_v4_host_bits: u8,
    /// Host bits of the IPv6 encapsulation source that vary per flow (0..=32).
    pub encap_src_v6_host_bits: u8,
    /// Next-hop MAC used when the FIB has no answer (no route, no neighbour entry, forwarding off).
    pub fallback_dst_mac: [u8; 6],
    /// What an ICMP echo request to a VIP address gets ([`icmp_echo`]).
    pub icmp_echo: u8,
    /// Nonzero when some VIP has a session key (`crate::session`): UDP datagrams then look
    /// their VIP up before the flow table, to be looked up by their session. Zero costs the
    /// fast path nothing.
    pub session_keys: u8,
    /// The secret key of the flow and source hashes (`crate::flow::HashKey`).
    pub flow_hash_key: [u64; 2],
}
assert_layout!(
    DataplaneConfig,
    size = 56,
    udp_idle_timeout_ns = 0,
    encap_src_v6 = 8,
    encap_src_v4 = 24,
    mtu = 28,
    encap_src_v4_host_bits = 30,
    encap_src_v6_host_bits = 31,
    fallback_dst_mac = 32,
    icmp_echo = 38,
    session_keys = 39,
    flow_hash_key = 40
);
userspace_pod!(DataplaneConfig);

/// What an ICMP echo request to a VIP address gets ([`DataplaneConfig::icmp_echo`]).
pub mod icmp_echo {
    /// Answered by the balancer, from the VIP: the VIP answers pings while a balancer serves it.
    pub const REPLY: u8 = 0;
    /// Passed to the balancer's kernel (which answers if the address is its own).
    pub const PASS: u8 = 1;
    /// Dropped.
    pub const DROP: u8 = 2;
}

/// Most host bits of the IPv4 encapsulation source that may vary.
pub const MAX_ENCAP_SRC_V4_HOST_BITS: u8 = 16;
/// Most host bits of the IPv6 encapsulation source that may vary.
pub const MAX_ENCAP_SRC_V6_HOST_BITS: u8 = 32;

/// The outer source address for a flow: the prefix with its low `host_bits` bits taken from `hash`.
/// `addr` is the prefix (4 or 16 bytes used); only its last 4 bytes change.
#[inline(always)]
pub fn encap_source(prefix_last_word: [u8; 4], host_bits: u8, hash: u32) -> [u8; 4] {
    let mask: u32 = if host_bits >= 32 { u32::MAX } else { (1u32 << host_bits) - 1 };
    let word = (u32::from_be_bytes(prefix_last_word) & !mask) | (hash & mask);
    word.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encap_source_keeps_the_prefix() {
        assert_eq!(encap_source([198, 18, 200, 0], 8, 0xdead_beef), [198, 18, 200, 0xef]);
        assert_eq!(encap_source([198, 18, 200, 7], 0, 0xdead_beef), [198, 18, 200, 7]);
        assert_eq!(encap_source([0, 0, 0, 0], 32, 0x0102_0304), [1, 2, 3, 4]);
        assert_eq!(encap_source([198, 18, 0, 0], 16, 0xdead_beef), [198, 18, 0xbe, 0xef]);
    }
}
