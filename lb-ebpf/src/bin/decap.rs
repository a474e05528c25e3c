//! Backend-side decapsulation: strips the balancer's outer IPv4/IPv6 header from packets whose
//! outer source is a balancer's (`lb_common::decap`) and whose inner destination is a configured
//! VIP, and passes the inner packet to the stack.
//!
//! Needed because backends may lack the kernel's `ipip/ip6_tunnel` modules. Only option-free,
//! unfragmented outer headers carrying IPv4 (protocol 4) or IPv6 (41) are decapsulated; anything
//! else passes untouched. A Congestion Experienced mark on the outer header is copied to an
//! ECN-capable inner packet (RFC 6040), so congestion signals survive the tunnel.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use lb_common::{
    capacity::MAX_VIPS,
    counters::{Reason, ReasonCounter},
    decap::{DECAP_SOURCE_FIXED_BITS, DecapConfig, DecapSourceKey, MAX_DECAP_SOURCES, unlisted_source},
    family,
    vip::VipAddrKey,
};
use lb_ebpf::{
    access::{frame_len, ptr_at_mut, read, write},
    checksum,
    counters::count_reason,
    l2::{self, ETH_LEN, ETH_P_IPV4, ETH_P_IPV6, Link, ether_type_offset},
    l3::{IPPROTO_IPIP, IPPROTO_IPV6, ipv4_is_fragment},
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

/// VIP addresses this backend serves.
#[map(name = "LB_DECAP_VIPS")]
static DECAP_VIPS: HashMap<VipAddrKey, u32> = HashMap::with_max_entries(MAX_VIPS, 0);

/// Tunnel sources accepted: the balancers' prefixes.
#[map(name = "LB_DECAP_SRCS")]
static DECAP_SOURCES: LpmTrie<DecapSourceKey, u32> = LpmTrie::with_max_entries(MAX_DECAP_SOURCES, 0);

#[map(name = "LB_DECAP_CONFIG")]
static DECAP_CONFIG: Array<DecapConfig> = Array::with_max_entries(1, 0);

#[map(name = "LB_REASON_STATS")]
static REASON_STATS: PerCpuArray<ReasonCounter> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

const ECN_MASK: u8 = 0b11;
const ECN_CE: u8 = 0b11;

// Named for `bpftool prog`: the balancer's decapsulation, beside other XDP programs on the host.
#[xdp]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    let bytes = frame_len(&ctx) as u64;
    let reason = decapsulate(&ctx);
    count_reason(&REASON_STATS, reason, bytes);
    if reason == Reason::DecapDropUnknownSource { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
}

#[inline(always)]
fn decapsulate(ctx: &XdpContext) -> Reason {
    let Link::Ip { ether_type, l3_offset } = l2::parse(ctx) else {
        return Reason::DecapPassNotTunnel;
    };
    let Some(outer) = outer_header(ctx, ether_type, l3_offset) else {
        return Reason::DecapPassNotTunnel;
    };
    let (outer_len, inner_protocol, outer_ecn) = (outer.len, outer.inner_protocol, outer.ecn);
    let source = Key::new(DECAP_SOURCE_FIXED_BITS + 128, DecapSourceKey { family: outer.family, addr: outer.src });
    if DECAP_SOURCES.get(&source).is_none() {
        let drop = DECAP_CONFIG.get(0).is_some_and(|c| c.unlisted_source == unlisted_source::DROP);
        return if drop { Reason::DecapDropUnknownSource } else { Reason::DecapPassUnknownSource };
    }
    let inner = l3_offset + outer_len;
    let (inner_family, inner_ether_type, inner_dst) = if inner_protocol == IPPROTO_IPIP {
        let Some(h) = read::<Ipv4Hdr>(ctx, inner) else {
            return Reason::PassUnparseable;
        };
        let mut dst = [0u8; 16];
        dst[..4].copy_from_slice(&h.dst_addr);
        (family::IPV4, ETH_P_IPV4, dst)
    } else {
        let Some(h) = read::<Ipv6Hdr>(ctx, inner) else {
            return Reason::PassUnparseable;
        };
        (family::IPV6, ETH_P_IPV6, h.dst_addr)
    };
    // SAFETY: plain lookup; the value is not used.
    if unsafe { DECAP_VIPS.get(VipAddrKey::new(inner_family, inner_dst)) }.is_none() {
        return Reason::DecapPassUnknownVip;
    }
    if outer_ecn == ECN_CE {
        propagate_congestion(ctx, inner, inner_family);
    }

    let Some(eth) = read::<[u8; ETH_LEN]>(ctx, 0) else {
        return Reason::PassUnparseable;
    };
    let tagged = l3_offset != ETH_LEN;
    let tag = read::<[u8; 4]>(ctx, ETH_LEN).unwrap_or([0; 4]);
    // SAFETY: the helper only moves the packet start; pointers are re-derived below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return Reason::PassUnparseable;
    }
    let written = write(ctx, 0, eth).and_then(|()| if tagged { write(ctx, ETH_LEN, tag) } else { Some(()) });
    if written.and_then(|()| write(ctx, ether_type_offset(l3_offset), inner_ether_type.to_be_bytes())).is_none() {
        // Cannot happen: the frame only got shorter by the outer header we just read past.
        return Reason::PassUnparseable;
    }
    Reason::DecapPass
}

/// The outer header of a tunnel packet this program handles.
struct Outer {
    len: usize,
    inner_protocol: u8,
    ecn: u8,
    family: u8,
    /// IPv4 in the first 4 bytes, the rest zero.
    src: [u8; 16],
}

#[inline(always)]
fn outer_header(ctx: &XdpContext, ether_type: u16, l3_offset: usize) -> Option<Outer> {
    if ether_type == ETH_P_IPV4 {
        let h = read::<Ipv4Hdr>(ctx, l3_offset)?;
        if h.vihl != 0x45 || ipv4_is_fragment(h.frags) || (h.proto != IPPROTO_IPIP && h.proto != IPPROTO_IPV6) {
            return None;
        }
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&h.src_addr);
        Some(Outer { len: Ipv4Hdr::LEN, inner_protocol: h.proto, ecn: h.tos & ECN_MASK, family: family::IPV4, src })
    } else {
        let h = read::<Ipv6Hdr>(ctx, l3_offset)?;
        if h.vcf[0] >> 4 != 6 || (h.next_hdr != IPPROTO_IPIP && h.next_hdr != IPPROTO_IPV6) {
            return None;
        }
        let traffic_class = (h.vcf[0] << 4) | (h.vcf[1] >> 4);
        Some(Outer {
            len: Ipv6Hdr::LEN,
            inner_protocol: h.next_hdr,
            ecn: traffic_class & ECN_MASK,
            family: family::IPV6,
            src: h.src_addr,
        })
    }
}

/// Marks an ECN-capable inner packet Congestion Experienced.
#[inline(always)]
fn propagate_congestion(ctx: &XdpContext, inner: usize, inner_family: u8) {
    if inner_family == family::IPV4 {
        let Some(h) = ptr_at_mut::<Ipv4Hdr>(ctx, inner) else {
            return;
        };
        // SAFETY: ptr_at_mut checked the header is inside the packet.
        unsafe {
            let old_tos = (*h).tos;
            // Not ECN-capable, or already marked: nothing to write. (Rewriting an unchanged field
            // would still turn a checksum of 0xffff into its other form, 0x0000.)
            if old_tos & ECN_MASK == 0 || old_tos & ECN_MASK == ECN_CE {
                return;
            }
            let new_tos = old_tos | ECN_CE;
            let old_word = u16::from_be_bytes([(*h).vihl, old_tos]);
            let new_word = u16::from_be_bytes([(*h).vihl, new_tos]);
            (*h).tos = new_tos;
            (*h).check = checksum::replace_word((*h).check, old_word, new_word);
        }
    } else {
        let Some(h) = ptr_at_mut::<Ipv6Hdr>(ctx, inner) else {
            return;
        };
        // SAFETY: as above. The ECN bits are the low two bits of the traffic class, which spans
        // the low nibble of byte 0 and the high nibble of byte 1.
        unsafe {
            let ecn = ((*h).vcf[1] >> 4) & ECN_MASK;
            if ecn != 0 {
                (*h).vcf[1] |= ECN_CE << 4;
            }
        }
    }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
