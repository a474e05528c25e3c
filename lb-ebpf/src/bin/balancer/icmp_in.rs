//! ICMP addressed to a VIP: echo requests answered (or passed, or dropped) by the configured
//! policy, and errors about a VIP's flows steered to the backend that owns the flow.
//!
//! A backend answers clients with the VIP as its source (direct server return), so a router on
//! the way back that cannot forward a large reply sends "fragmentation needed" / "packet too big"
//! to the VIP, that is to the balancer. The error quotes the reply's IP header and first 8 bytes
//! of L4: reversed, that is the client's flow, whose backend (flow table, else the VIP's table by
//! the flow's hash) gets the error encapsulated like the flow's packets, so path-MTU discovery on
//! the direct-return path works (as Katran and Cilium do).

use aya_ebpf::programs::XdpContext;
use lb_common::{
    admission::is_spoofed_source,
    counters::Reason,
    dataplane::{DataplaneConfig, icmp_echo},
    family,
    flow::FlowKey,
    vip::VipAddrKey,
};
use lb_ebpf::{
    access::{read, write},
    checksum,
    l3::{IPPROTO_TCP, IPPROTO_UDP, Ip},
};

use crate::{
    maps::VIP_ADDRS,
    verdict::{self, Verdict},
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_DEST_UNREACHABLE: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// An ICMP header: type, code, checksum and 4 bytes that depend on the type.
const ICMP_HEADER_LEN: usize = 8;
/// TTL / hop limit of an echo reply.
const REPLY_TTL: u8 = 64;

/// What to do with an ICMP packet.
pub enum Icmp {
    /// Not for a VIP address, or a kind the balancer leaves to the kernel (neighbour discovery...).
    Pass,
    /// Answered or refused here.
    Done(Verdict),
    /// An error about the flow `FlowKey` (as the client sends it): to its backend.
    Steer(FlowKey),
}

/// Classifies (and answers, for echo) an ICMP or `ICMPv6` packet. Out of line: its branches
/// would multiply the verifier's paths through the forwarding stages.
#[inline(never)]
pub fn to_vip(ctx: &XdpContext, ip: &Ip, cfg: &DataplaneConfig) -> Icmp {
    // SAFETY: plain lookup; the value is not used.
    if unsafe { VIP_ADDRS.get(VipAddrKey::new(ip.flow.family, ip.flow.dst_addr)) }.is_none() {
        return Icmp::Pass;
    }
    let v4 = ip.flow.family == family::IPV4;
    let l4 = ip.l3_offset + ip.header_len();
    // The ICMP header must lie inside the IP packet, not merely in the frame.
    let inside = l4 + ICMP_HEADER_LEN <= ip.l3_offset + usize::from(ip.packet_len);
    let Some([kind, code]) = read::<[u8; 2]>(ctx, l4).filter(|_| inside) else {
        return Icmp::Done(verdict::drop(Reason::DropTruncated));
    };
    let echo = if v4 { kind == ICMP_ECHO_REQUEST } else { kind == ICMPV6_ECHO_REQUEST };
    if echo {
        return echo_request(ctx, ip, cfg, code);
    }
    let error = if v4 {
        kind == ICMP_DEST_UNREACHABLE
    } else {
        kind == ICMPV6_DEST_UNREACHABLE || kind == ICMPV6_PACKET_TOO_BIG
    };
    if !error {
        return Icmp::Pass;
    }
    match quoted_flow(ctx, ip, l4 + ICMP_HEADER_LEN) {
        Some(flow) => Icmp::Steer(flow),
        None => Icmp::Done(verdict::drop(Reason::DropIcmpUnmatched)),
    }
}

/// The client's flow that an error quotes: the quoted packet left a backend with the VIP as its
/// source (this error's destination), to the client. Only an option-free quoted header with at
/// least the ports is read.
#[inline(always)]
fn quoted_flow(ctx: &XdpContext, ip: &Ip, quote: usize) -> Option<FlowKey> {
    // The quoted header and ports must lie inside the error's IP packet, not in what follows it
    // in the frame.
    let quoted_len = if ip.flow.family == family::IPV4 { 20 + 4 } else { 40 + 4 };
    if quote + quoted_len > ip.l3_offset + usize::from(ip.packet_len) {
        return None;
    }
    let mut flow = FlowKey::default();
    flow.family = ip.flow.family;
    let (protocol, ports_at) = if ip.flow.family == family::IPV4 {
        let h = read::<[u8; 20]>(ctx, quote)?;
        if h[0] != 0x45 {
            return None;
        }
        flow.src_addr[..4].copy_from_slice(&h[16..20]);
        flow.dst_addr[..4].copy_from_slice(&h[12..16]);
        (h[9], quote + 20)
    } else {
        let h = read::<[u8; 40]>(ctx, quote)?;
        if h[0] >> 4 != 6 {
            return None;
        }
        flow.src_addr.copy_from_slice(&h[24..40]);
        flow.dst_addr.copy_from_slice(&h[8..24]);
        (h[6], quote + 40)
    };
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return None;
    }
    // The quoted packet's source must be the VIP this error came to.
    if flow.dst_addr != ip.flow.dst_addr {
        return None;
    }
    let p = read::<[u8; 4]>(ctx, ports_at)?;
    flow.src_port = [p[2], p[3]];
    flow.dst_port = [p[0], p[1]];
    flow.protocol = protocol;
    Some(flow)
}

/// An echo request to a VIP address, by the configured policy.
#[inline(always)]
fn echo_request(ctx: &XdpContext, ip: &Ip, cfg: &DataplaneConfig, code: u8) -> Icmp {
    match cfg.icmp_echo {
        icmp_echo::PASS => Icmp::Pass,
        icmp_echo::DROP => Icmp::Done(verdict::drop(Reason::DropIcmpEcho)),
        // A reply to a source no client has would go to a victim, or nowhere.
        _ if is_spoofed_source(ip.flow.family, &ip.flow.src_addr, cfg) => {
            Icmp::Done(verdict::drop(Reason::DropSpoofedSource))
        }
        _ => match reply(ctx, ip, code) {
            Some(()) => Icmp::Done(verdict::tx(Reason::TxIcmpEchoReply)),
            None => Icmp::Done(verdict::drop(Reason::DropTruncated)),
        },
    }
}

/// Turns the echo request into its reply, in place: addresses and MACs swapped, a fresh TTL, the
/// type changed, checksums updated.
#[inline(always)]
fn reply(ctx: &XdpContext, ip: &Ip, code: u8) -> Option<()> {
    let macs = read::<[u8; 12]>(ctx, 0)?;
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    write(ctx, 0, swapped)?;
    let l3 = ip.l3_offset;
    let l4 = l3 + ip.header_len();
    let check = read::<[u8; 2]>(ctx, l4 + 2)?;
    if ip.flow.family == family::IPV4 {
        let h = read::<[u8; 20]>(ctx, l3)?;
        // Addresses swapped leave the header's sum as it was; the TTL word changes.
        let mut new = h;
        new[12..16].copy_from_slice(&h[16..20]);
        new[16..20].copy_from_slice(&h[12..16]);
        new[8] = REPLY_TTL;
        let ip_check = checksum::replace_word(
            [h[10], h[11]],
            u16::from_be_bytes([h[8], h[9]]),
            u16::from_be_bytes([REPLY_TTL, h[9]]),
        );
        new[10..12].copy_from_slice(&ip_check);
        write(ctx, l3, new)?;
        write(ctx, l4, ICMP_ECHO_REPLY)?;
        write(
            ctx,
            l4 + 2,
            checksum::replace_word(check, type_word(ICMP_ECHO_REQUEST, code), type_word(ICMP_ECHO_REPLY, code)),
        )
    } else {
        // The pseudo-header's sum does not change when the addresses swap.
        let src = read::<[u8; 16]>(ctx, l3 + 8)?;
        let dst = read::<[u8; 16]>(ctx, l3 + 24)?;
        write(ctx, l3 + 8, dst)?;
        write(ctx, l3 + 24, src)?;
        write(ctx, l3 + 7, REPLY_TTL)?;
        write(ctx, l4, ICMPV6_ECHO_REPLY)?;
        write(
            ctx,
            l4 + 2,
            checksum::replace_word(check, type_word(ICMPV6_ECHO_REQUEST, code), type_word(ICMPV6_ECHO_REPLY, code)),
        )
    }
}

/// The checksummed word that holds an ICMP message's type and code.
#[inline(always)]
const fn type_word(kind: u8, code: u8) -> u16 {
    u16::from_be_bytes([kind, code])
}
