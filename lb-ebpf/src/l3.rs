//! IPv4 and IPv6 headers, classified for the balancer's policy.
//!
//! Parsing never decides alone whether to drop: a packet the balancer cannot serve is dropped only
//! if it is addressed to a VIP; anything else passes to the kernel untouched. So the parser
//! reports an `anomaly` and leaves the verdict to the caller, which knows the VIP addresses.

use aya_ebpf::programs::XdpContext;
use lb_common::{counters::Reason, family, flow::FlowKey};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    access::{frame_len, ptr_at, read},
    l2::ETH_P_IPV4,
};

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_FRAGMENT: u8 = 44;
/// IPv6 extension headers other than the fragment header: hop-by-hop, routing, destination
/// options, AH, mobility, HIP, shim6.
const IPV6_EXTENSION_HEADERS: [u8; 7] = [0, 43, 60, 51, 135, 139, 140];

const IPV4_DONT_FRAGMENT: u16 = 0x4000;
const IPV4_FRAGMENT_OFFSET: u16 = 0x1fff;
const IPV4_MORE_FRAGMENTS: u16 = 0x2000;
/// Length of an IPv6 fragment header.
const IPV6_FRAGMENT_HEADER_LEN: usize = 8;

/// Where a packet stands in a fragmented datagram ([`Ip::fragment`]).
pub mod fragment {
    /// Not a fragment (an IPv6 atomic fragment, offset 0 without more, included).
    pub const NONE: u8 = 0;
    /// The first fragment: it carries the L4 header, ports included.
    pub const FIRST: u8 = 1;
    /// A later fragment: no L4 header.
    pub const LATER: u8 = 2;

    /// The kind of a fragment at `offset` (13 bits) with more fragments after it or not. Without
    /// branches: a branch here would give the verifier one state per kind through every stage
    /// after the parse.
    #[inline(always)]
    pub fn classify(offset: u16, more: bool) -> u8 {
        // 1 if the offset is not zero, else 0 (the sum stays below 2^14).
        let later = ((u32::from(offset) + 0x1fff) >> 13) as u8;
        let more = u8::from(more);
        later * LATER + (1 - later) * more * FIRST
    }
}

/// An IP header as the balancer needs it. The addresses, protocol and family are kept in the
/// flow key itself ([`ports`] completes it), so the fast path never copies them again.
pub struct Ip {
    pub flow: FlowKey,
    pub l3_offset: usize,
    /// The whole IP packet's length, header included, per the header's length field.
    pub packet_len: u16,
    /// TOS / traffic class byte (DSCP and ECN).
    pub traffic_class: u8,
    /// IPv4 DF flag (always true for IPv6, which routers never fragment).
    pub dont_fragment: bool,
    /// Why the balancer cannot serve this packet, if it cannot.
    pub anomaly: Option<Reason>,
    /// One of [`fragment`]. Fragments of TCP and UDP are served (the first finds the backend,
    /// the later ones follow it); others are an anomaly.
    pub fragment: u8,
    /// The IPv4 identification or IPv6 fragment identification of a fragment.
    pub fragment_id: u32,
    /// Bytes of an IPv6 fragment header after the fixed header (0 or 8).
    pub extension_len: u8,
}

/// Result of reading the IP header.
pub enum L3 {
    Ip(Ip),
    /// The frame ends before the addresses: nothing can be said about it.
    Truncated,
}

#[inline(always)]
pub fn parse(ctx: &XdpContext, ether_type: u16, l3_offset: usize) -> L3 {
    if ether_type == ETH_P_IPV4 { parse_ipv4(ctx, l3_offset) } else { parse_ipv6(ctx, l3_offset) }
}

/// Where an IPv4 packet stands in a fragmented datagram (one of [`fragment`]), from its flags
/// and fragment offset field.
#[inline(always)]
pub fn ipv4_fragment(frags: [u8; 2]) -> u8 {
    let frags = u16::from_be_bytes(frags);
    fragment::classify(frags & IPV4_FRAGMENT_OFFSET, frags & IPV4_MORE_FRAGMENTS != 0)
}

/// Whether an IPv4 packet is a fragment of any kind ([`ipv4_fragment`] is not
/// [`fragment::NONE`]), in fewer instructions.
#[inline(always)]
pub fn ipv4_is_fragment(frags: [u8; 2]) -> bool {
    u16::from_be_bytes(frags) & (IPV4_FRAGMENT_OFFSET | IPV4_MORE_FRAGMENTS) != 0
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3_offset: usize) -> L3 {
    let Some(h) = ptr_at::<Ipv4Hdr>(ctx, l3_offset) else {
        return L3::Truncated;
    };
    // SAFETY: ptr_at checked that the whole header is inside the packet; only the fields used
    // are loaded.
    let h = unsafe { &*h };
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&h.src_addr);
    dst[..4].copy_from_slice(&h.dst_addr);
    let header_len = usize::from(h.vihl & 0x0f) * 4;
    let packet_len = u16::from_be_bytes(h.tot_len);
    let frags = u16::from_be_bytes(h.frags);
    let available = frame_len(ctx) - l3_offset;
    let fragment = ipv4_fragment(h.frags);
    let anomaly = if h.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN || usize::from(packet_len) < header_len {
        Some(Reason::DropBadHeader)
    } else if usize::from(packet_len) > available {
        Some(Reason::DropTruncated)
    } else if fragment != fragment::NONE && h.proto != IPPROTO_TCP && h.proto != IPPROTO_UDP {
        Some(Reason::DropFragment)
    } else if header_len != Ipv4Hdr::LEN {
        Some(Reason::DropIpv4Options)
    } else if h.ttl == 0 {
        Some(Reason::DropTtlExpired)
    } else {
        None
    };
    L3::Ip(Ip {
        flow: FlowKey {
            src_addr: src,
            dst_addr: dst,
            src_port: [0; 2],
            dst_port: [0; 2],
            protocol: h.proto,
            family: family::IPV4,
            kind: lb_common::flow::kind::FIVE_TUPLE,
            _pad: [0; 1],
        },
        l3_offset,
        packet_len,
        traffic_class: h.tos,
        dont_fragment: frags & IPV4_DONT_FRAGMENT != 0,
        anomaly,
        fragment,
        fragment_id: u32::from(u16::from_be_bytes(h.id)),
        extension_len: 0,
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3_offset: usize) -> L3 {
    let Some(h) = ptr_at::<Ipv6Hdr>(ctx, l3_offset) else {
        return L3::Truncated;
    };
    // SAFETY: as for IPv4.
    let h = unsafe { &*h };
    let packet_len = u16::from_be_bytes(h.payload_len).saturating_add(Ipv6Hdr::LEN as u16);
    let available = frame_len(ctx) - l3_offset;
    let mut next = h.next_hdr;
    let (mut fragment, mut fragment_id, mut extension_len) = (fragment::NONE, 0, 0);
    let mut anomaly = if h.vcf[0] >> 4 != 6 {
        Some(Reason::DropBadHeader)
    } else if usize::from(u16::from_be_bytes(h.payload_len)) + Ipv6Hdr::LEN > available {
        Some(Reason::DropTruncated)
    } else {
        None
    };
    if anomaly.is_none() && next == IPPROTO_FRAGMENT {
        // Next header, reserved, offset (13 bits) with the more-fragments flag, identification;
        // inside the packet's payload length, not merely the frame.
        let inside = usize::from(packet_len) >= Ipv6Hdr::LEN + IPV6_FRAGMENT_HEADER_LEN;
        match read::<[u8; 8]>(ctx, l3_offset + Ipv6Hdr::LEN).filter(|_| inside) {
            None => anomaly = Some(Reason::DropTruncated),
            Some(f) => {
                next = f[0];
                extension_len = IPV6_FRAGMENT_HEADER_LEN as u8;
                fragment_id = u32::from_be_bytes([f[4], f[5], f[6], f[7]]);
                let offset_and_more = u16::from_be_bytes([f[2], f[3]]);
                fragment = fragment::classify(offset_and_more >> 3, offset_and_more & 1 != 0);
                if next != IPPROTO_TCP && next != IPPROTO_UDP && !IPV6_EXTENSION_HEADERS.contains(&next) {
                    anomaly = Some(Reason::DropFragment);
                }
            }
        }
    }
    if anomaly.is_none() {
        anomaly = if next == IPPROTO_FRAGMENT || IPV6_EXTENSION_HEADERS.contains(&next) {
            Some(Reason::DropIpv6Extension)
        } else if h.hop_limit == 0 {
            Some(Reason::DropTtlExpired)
        } else {
            None
        };
    }
    L3::Ip(Ip {
        flow: FlowKey {
            src_addr: h.src_addr,
            dst_addr: h.dst_addr,
            src_port: [0; 2],
            dst_port: [0; 2],
            protocol: next,
            family: family::IPV6,
            kind: lb_common::flow::kind::FIVE_TUPLE,
            _pad: [0; 1],
        },
        l3_offset,
        packet_len,
        traffic_class: (h.vcf[0] << 4) | (h.vcf[1] >> 4),
        dont_fragment: true,
        anomaly,
        fragment,
        fragment_id,
        extension_len,
    })
}

impl Ip {
    /// Length of the IP header, an IPv6 fragment header included (options and other extension
    /// headers are never served).
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        if self.flow.family == family::IPV4 { Ipv4Hdr::LEN } else { Ipv6Hdr::LEN + usize::from(self.extension_len) }
    }
}

/// What a packet says about its connection: all the balancer needs of the TCP flags.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// A TCP SYN without ACK: a new connection (or a retransmission of its first packet).
    Opens,
    /// A TCP FIN or RST from the client: the connection ends.
    Ends,
    /// Anything else, every UDP datagram included.
    Continues,
}

/// Completes the flow key with the ports of a TCP or UDP packet, if its whole minimal L4 header
/// is inside both the frame and the IP packet, and says what the packet does to its connection.
#[inline(always)]
pub fn ports(ctx: &XdpContext, ip: &mut Ip) -> Option<Segment> {
    let min_header: usize = if ip.flow.protocol == IPPROTO_TCP { 20 } else { 8 };
    if ip.header_len() + min_header > usize::from(ip.packet_len) {
        return None;
    }
    let l4 = ip.l3_offset + ip.header_len();
    // The first four bytes of both headers are the ports; the rest must be present too.
    read::<[u8; 4]>(ctx, l4 + min_header - 4)?;
    let p = read::<[u8; 4]>(ctx, l4)?;
    ip.flow.src_port = [p[0], p[1]];
    ip.flow.dst_port = [p[2], p[3]];
    if ip.flow.protocol != IPPROTO_TCP {
        return Some(Segment::Continues);
    }
    let flags = read::<u8>(ctx, l4 + TCP_FLAGS_OFFSET)?;
    Some(if flags & (TCP_FIN | TCP_RST) != 0 {
        Segment::Ends
    } else if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        Segment::Opens
    } else {
        Segment::Continues
    })
}

const TCP_FLAGS_OFFSET: usize = 13;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
