//! IPIP / IP6IP6 (and IPv4-in-IPv6, IPv6-in-IPv4) encapsulation for direct server return.
//!
//! The inner packet is left exactly as the client sent it (TTL, checksums, options-free header),
//! so the backend sees the client's packet once the outer header is stripped. The outer header:
//! - family of the backend; protocol 4 (inner IPv4) or 41 (inner IPv6);
//! - source: the configured prefix with its host bits taken from the flow hash, so backend NICs
//!   spread flows across receive queues; IPv6 also carries the flow hash in the flow label;
//! - TTL / hop limit [`OUTER_TTL`]: the tunnel is a fresh path from balancer to backend;
//! - TOS / traffic class copied from the inner packet (DSCP and ECN, RFC 2983 uniform model and
//!   RFC 6040 normal mode), so `QoS` and congestion marks apply on the way to the backend;
//! - IPv4 DF copied from an inner IPv4 packet (RFC 2003), set for inner IPv6.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    backend::Backend,
    capacity::{IPV4_ENCAP_OVERHEAD, IPV6_ENCAP_OVERHEAD, OUTER_TTL},
    counters::Reason,
    dataplane::{DataplaneConfig, encap_source},
    family,
};
use lb_ebpf::{
    access::{self, read},
    checksum,
    l2::{ETH_LEN, ETH_P_IPV4, ETH_P_IPV6, ether_type_offset},
    l3::{IPPROTO_IPIP, IPPROTO_IPV6, Ip},
};

/// Offset of a VLAN tag (TPID and TCI) in a tagged frame.
const VLAN_TAG_OFFSET: usize = 12;

/// Bytes the outer header adds for `backend`.
#[inline(always)]
pub fn overhead(backend: &Backend) -> u16 {
    if backend.family == family::IPV4 { IPV4_ENCAP_OVERHEAD } else { IPV6_ENCAP_OVERHEAD }
}

/// The largest inner packet that fits the MTU once encapsulated for `backend`.
#[inline(always)]
pub fn inner_mtu(backend: &Backend, cfg: &DataplaneConfig) -> u16 {
    cfg.mtu.saturating_sub(overhead(backend))
}

/// Prepends the outer header, sets the ethertype (and keeps the VLAN tag) and the source MAC
/// to this host's; returns the outer packet's length. The next-hop stage sets the MACs. After this, every packet pointer taken before is
/// invalid. Out of line, with its own stack frame.
#[inline(never)]
pub fn encapsulate(
    ctx: &XdpContext,
    cfg: &DataplaneConfig,
    ip: &Ip,
    backend: &Backend,
    hash: u32,
) -> Result<u16, Reason> {
    let v4_outer = backend.family == family::IPV4;
    let len = ip.packet_len + overhead(backend);
    let inner_protocol = inner_protocol(ip);

    // Save what stays of the link header before moving the packet start.
    let received_on = read::<[u8; 6]>(ctx, 0).ok_or(Reason::DropEncapFailed)?;
    let tagged = ip.l3_offset != ETH_LEN;
    // The tag protocol identifier and the tag control information.
    let tag = if tagged { read::<[u8; 4]>(ctx, VLAN_TAG_OFFSET).ok_or(Reason::DropEncapFailed)? } else { [0; 4] };

    // SAFETY: the helper only moves the packet start; pointers are re-derived below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -i32::from(overhead(backend))) } != 0 {
        return Err(Reason::DropEncapFailed);
    }

    let l3 = ip.l3_offset;
    // The source MAC until the next-hop stage knows better: the address the frame was sent to,
    // this host's.
    write(ctx, 6, received_on)?;
    if tagged {
        write(ctx, VLAN_TAG_OFFSET, tag)?;
    }
    let ether_type = if v4_outer { ETH_P_IPV4 } else { ETH_P_IPV6 };
    write(ctx, ether_type_offset(l3), ether_type.to_be_bytes())?;

    if v4_outer {
        outer_ipv4(ctx, cfg, ip, backend, hash, len, inner_protocol)?;
    } else {
        outer_ipv6(ctx, cfg, ip, backend, hash, inner_protocol)?;
    }
    Ok(len)
}

/// The outer IPv4 header, `len` bytes long with what it carries (`inner_protocol`), at the
/// packet's IP offset.
#[inline(always)]
fn outer_ipv4(
    ctx: &XdpContext,
    cfg: &DataplaneConfig,
    ip: &Ip,
    backend: &Backend,
    hash: u32,
    len: u16,
    inner_protocol: u8,
) -> Result<(), Reason> {
    let l3 = ip.l3_offset;
    let src = encap_source(cfg.encap_src_v4, cfg.encap_src_v4_host_bits, hash);
    let [len_hi, len_lo] = len.to_be_bytes();
    let flags = if ip.flow.family == family::IPV6 || ip.dont_fragment { 0x40 } else { 0 };
    let d = backend.addr;
    // Checksummed from the values, not by reading the header back.
    let check = checksum::ipv4_header([
        u16::from_be_bytes([0x45, ip.traffic_class]),
        len,
        0,
        u16::from_be_bytes([flags, 0]),
        u16::from_be_bytes([OUTER_TTL, inner_protocol]),
        0,
        u16::from_be_bytes([src[0], src[1]]),
        u16::from_be_bytes([src[2], src[3]]),
        u16::from_be_bytes([d[0], d[1]]),
        u16::from_be_bytes([d[2], d[3]]),
    ]);
    let h: [u8; 20] = [
        0x45,
        ip.traffic_class,
        len_hi,
        len_lo,
        0,
        0,
        flags,
        0,
        OUTER_TTL,
        inner_protocol,
        check[0],
        check[1],
        src[0],
        src[1],
        src[2],
        src[3],
        d[0],
        d[1],
        d[2],
        d[3],
    ];
    write(ctx, l3, h)?;
    Ok(())
}

/// The outer IPv6 header at the packet's IP offset; its flow label is the flow hash's.
#[inline(always)]
fn outer_ipv6(
    ctx: &XdpContext,
    cfg: &DataplaneConfig,
    ip: &Ip,
    backend: &Backend,
    hash: u32,
    inner_protocol: u8,
) -> Result<(), Reason> {
    let l3 = ip.l3_offset;
    let mut src = cfg.encap_src_v6;
    let low = encap_source([src[12], src[13], src[14], src[15]], cfg.encap_src_v6_host_bits, hash);
    src[12..].copy_from_slice(&low);
    let tc = ip.traffic_class;
    let label = hash & 0x000f_ffff;
    let [pl_hi, pl_lo] = ip.packet_len.to_be_bytes();
    let head: [u8; 8] = [
        0x60 | (tc >> 4),
        (tc << 4) | (label >> 16) as u8,
        (label >> 8) as u8,
        label as u8,
        pl_hi,
        pl_lo,
        inner_protocol,
        OUTER_TTL,
    ];
    write(ctx, l3, head)?;
    write(ctx, l3 + 8, src)?;
    write(ctx, l3 + 24, backend.addr)?;
    Ok(())
}

/// The outer header's protocol: what the inner packet is.
#[inline(always)]
fn inner_protocol(ip: &Ip) -> u8 {
    if ip.flow.family == family::IPV4 { IPPROTO_IPIP } else { IPPROTO_IPV6 }
}

#[inline(always)]
fn write<T>(ctx: &XdpContext, offset: usize, value: T) -> Result<(), Reason> {
    access::write(ctx, offset, value).ok_or(Reason::DropEncapFailed)
}
