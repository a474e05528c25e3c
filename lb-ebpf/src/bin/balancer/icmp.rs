//! Path MTU discovery through the balancer: a packet that would exceed the MTU once
//! encapsulated is turned, in place, into an ICMP "fragmentation needed" (IPv4, when the client
//! set DF) or `ICMPv6` "packet too big" back to the client, announcing the MTU left after the
//! tunnel's overhead. The client's stack then sends smaller packets to the VIP.
//!
//! The message comes from the VIP, quotes the client's IP header and first 8 bytes of L4 header
//! (enough for the client to find its socket), and leaves on the interface it came in by.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{counters::Reason, family};
use lb_ebpf::{
    access::{frame_len, ptr_at, read, write},
    checksum,
    l2::{ETH_LEN, ETH_P_IPV4, ETH_P_IPV6, ether_type_offset},
    l3::{IPPROTO_ICMP, IPPROTO_ICMPV6, Ip},
};

use crate::verdict::{self, Verdict};

/// The quoted part of the client's packet: its IP header and 8 bytes of L4 header.
const QUOTE_V4: usize = 20 + 8;
const QUOTE_V6: usize = 40 + 8;
/// The smallest MTU an IPv6 host accepts in a "packet too big".
const IPV6_MIN_MTU: u16 = 1280;

/// Answers a too-big packet; `mtu` is the largest inner packet that fits. Kept out of line: a
/// cold path with its own stack frame.
#[inline(never)]
pub fn too_big(ctx: &XdpContext, ip: &Ip, mtu: u16) -> Verdict {
    if ip.flow.family == family::IPV4 && !ip.dont_fragment {
        // The client allows fragmentation, which the balancer does not do: nothing to tell it.
        return verdict::drop(Reason::DropTooBig);
    }
    match answer(ctx, ip, mtu) {
        Some(()) => verdict::tx(Reason::TxIcmpTooBig),
        None => verdict::drop(Reason::DropTooBig),
    }
}

#[inline(always)]
fn answer(ctx: &XdpContext, ip: &Ip, mtu: u16) -> Option<()> {
    let v4 = ip.flow.family == family::IPV4;
    let l3 = ip.l3_offset;
    // New IP and ICMP headers go in front of the client's packet, which becomes the quote.
    let (headers, quote) = if v4 { (20 + 8, QUOTE_V4) } else { (40 + 8, QUOTE_V6) };
    // SAFETY: the helpers only move the packet's ends; pointers are re-derived below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(headers as i32)) } != 0 {
        return None;
    }
    let keep = l3 + headers + quote;
    let cut = frame_len(ctx).checked_sub(keep)?;
    if cut > 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -(cut as i32)) } != 0 {
        return None;
    }

    // The client's link header now sits `headers` bytes in: answer to its source, from its
    // destination, with its VLAN tag.
    let dst_mac = read::<[u8; 6]>(ctx, headers)?;
    write(ctx, 0, read::<[u8; 6]>(ctx, headers + 6)?)?;
    write(ctx, 6, dst_mac)?;
    if l3 != ETH_LEN {
        write(ctx, 12, read::<[u8; 4]>(ctx, headers + 12)?)?;
    }
    write(ctx, ether_type_offset(l3), (if v4 { ETH_P_IPV4 } else { ETH_P_IPV6 }).to_be_bytes())?;

    if v4 { too_big_v4(ctx, ip, l3, mtu) } else { too_big_v6(ctx, ip, l3, mtu) }
}

/// The IPv4 header and ICMP "fragmentation needed" of the answer, at `l3`.
#[inline(always)]
fn too_big_v4(ctx: &XdpContext, ip: &Ip, l3: usize, mtu: u16) -> Option<()> {
    let (vip, client) = (
        [ip.flow.dst_addr[0], ip.flow.dst_addr[1], ip.flow.dst_addr[2], ip.flow.dst_addr[3]],
        [ip.flow.src_addr[0], ip.flow.src_addr[1], ip.flow.src_addr[2], ip.flow.src_addr[3]],
    );
    let len = (20 + 8 + QUOTE_V4) as u16;
    let ip_check = checksum::ipv4_header([
        0x4500,
        len,
        0,
        0,
        u16::from_be_bytes([64, IPPROTO_ICMP]),
        0,
        u16::from_be_bytes([vip[0], vip[1]]),
        u16::from_be_bytes([vip[2], vip[3]]),
        u16::from_be_bytes([client[0], client[1]]),
        u16::from_be_bytes([client[2], client[3]]),
    ]);
    let [l0, l1] = len.to_be_bytes();
    let header: [u8; 20] = [
        0x45,
        0,
        l0,
        l1,
        0,
        0,
        0,
        0,
        64,
        IPPROTO_ICMP,
        ip_check[0],
        ip_check[1],
        vip[0],
        vip[1],
        vip[2],
        vip[3],
        client[0],
        client[1],
        client[2],
        client[3],
    ];
    write(ctx, l3, header)?;
    let quoted = ptr_at::<[u8; QUOTE_V4]>(ctx, l3 + 28)?;
    // Type 3 (destination unreachable), code 4 (fragmentation needed), next-hop MTU.
    // SAFETY: ptr_at checked the quote is inside the packet.
    let sum = words_sum(unsafe { &*quoted }) + 0x0304 + u32::from(mtu);
    let check = checksum::fold(sum).to_be_bytes();
    let [m0, m1] = mtu.to_be_bytes();
    write(ctx, l3 + 20, [3u8, 4, check[0], check[1], 0, 0, m0, m1])?;
    Some(())
}

/// The IPv6 header and `ICMPv6` "packet too big" of the answer, at `l3`.
#[inline(always)]
fn too_big_v6(ctx: &XdpContext, ip: &Ip, l3: usize, mtu: u16) -> Option<()> {
    let mtu = u32::from(mtu.max(IPV6_MIN_MTU));
    let payload = (8 + QUOTE_V6) as u16;
    let [p0, p1] = payload.to_be_bytes();
    write(ctx, l3, [0x60u8, 0, 0, 0, p0, p1, IPPROTO_ICMPV6, 64])?;
    write(ctx, l3 + 8, ip.flow.dst_addr)?;
    write(ctx, l3 + 24, ip.flow.src_addr)?;
    let quoted = ptr_at::<[u8; QUOTE_V6]>(ctx, l3 + 48)?;
    // SAFETY: ptr_at checked the quote is inside the packet.
    let quoted = unsafe { &*quoted };
    // Pseudo-header (addresses, length, next header), type 2 (packet too big), code 0, MTU.
    let sum = words_sum(&ip.flow.src_addr)
        + words_sum(&ip.flow.dst_addr)
        + u32::from(payload)
        + u32::from(IPPROTO_ICMPV6)
        + 0x0200
        + (mtu >> 16)
        + (mtu & 0xffff)
        + words_sum(quoted);
    let check = checksum::fold(sum).to_be_bytes();
    let m = mtu.to_be_bytes();
    write(ctx, l3 + 40, [2u8, 0, check[0], check[1], m[0], m[1], m[2], m[3]])?;
    Some(())
}

/// Sum of the big-endian 16-bit words of `bytes` (even length).
#[inline(always)]
fn words_sum<const N: usize>(bytes: &[u8; N]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}
