//! Ethernet, with at most one 802.1Q / 802.1ad tag.

use crate::access::read;
use aya_ebpf::programs::XdpContext;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const ETHER_TYPE_OFFSET: usize = 12;

/// Length of an Ethernet header without a tag.
pub const ETH_LEN: usize = 14;
/// Length of an Ethernet header with one VLAN tag.
pub const ETH_VLAN_LEN: usize = 18;

/// What the link layer says about a frame.
pub enum Link {
    /// An IP frame: its ethertype and where the IP header starts (14, or 18 when tagged).
    Ip { ether_type: u16, l3_offset: usize },
    /// Not IP (ARP, LLDP, a second VLAN tag, ...).
    Other,
    /// Too short to tell.
    Truncated,
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Link {
    let Some(outer_type) = read::<[u8; 2]>(ctx, ETHER_TYPE_OFFSET) else {
        return Link::Truncated;
    };
    let mut ether_type = u16::from_be_bytes(outer_type);
    let mut l3_offset = ETH_LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        // The inner ethertype sits after the 2-byte TCI.
        let Some(inner) = read::<[u8; 2]>(ctx, ETH_LEN + 2) else {
            return Link::Truncated;
        };
        ether_type = u16::from_be_bytes(inner);
        l3_offset = ETH_VLAN_LEN;
    }
    match ether_type {
        ETH_P_IPV4 | ETH_P_IPV6 => Link::Ip { ether_type, l3_offset },
        _ => Link::Other,
    }
}

/// The ethertype field's offset for a frame whose IP header starts at `l3_offset`.
#[inline(always)]
pub const fn ether_type_offset(l3_offset: usize) -> usize {
    l3_offset - 2
}
