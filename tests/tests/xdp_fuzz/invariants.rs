//! What must hold of every packet, whatever it is: the verdict is one of pass, drop, TX and
//! redirect; a passed packet is untouched; a sent one is a well-formed encapsulation of the
//! input to a backend that serves the input's VIP, or a well-formed ICMP answer to the input's
//! source. For the decapsulation program: it passes or drops; what it changes is exactly the
//! inner packet of a balancer's tunnel packet for one of its VIPs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_tests::xdp::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, verdict_name};

use crate::model::Model;

/// What became of a packet, as the reason counters class it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    Pass,
    Drop,
    Sent,
}

/// Where the IP header starts and its ethertype, parsed as the programs do (one tag at most).
fn link(frame: &[u8]) -> Option<(usize, u16)> {
    let ether_type = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    if ether_type == 0x8100 || ether_type == 0x88a8 {
        return Some((18, u16::from_be_bytes(frame.get(16..18)?.try_into().ok()?)));
    }
    Some((14, ether_type))
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn sum(bytes: &[u8]) -> u32 {
    bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum()
}

/// Whether a one's complement sum (the checksum field included) checks out.
fn sums_to_zero(mut s: u32) -> bool {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s == 0xffff
}

fn ipv6_pseudo_sum(src: &[u8], dst: &[u8], len: usize, next: u8) -> u32 {
    sum(src) + sum(dst) + (len as u32 >> 16) + (len as u32 & 0xffff) + u32::from(next)
}

pub fn balancer(model: &Model, input: &[u8], verdict: u32, output: &[u8]) -> Result<Class, String> {
    match verdict {
        XDP_PASS => {
            if output != input {
                return Err("passed, but changed".into());
            }
            Ok(Class::Pass)
        }
        XDP_DROP => Ok(Class::Drop),
        XDP_TX | XDP_REDIRECT => sent(model, input, output).map(|()| Class::Sent),
        other => Err(format!("verdict {} ({other})", verdict_name(other))),
    }
}

fn sent(model: &Model, input: &[u8], output: &[u8]) -> Result<(), String> {
    let (l3i, _) = link(input).ok_or("sent a frame it could not have parsed")?;
    let (l3o, ether_type) = link(output).ok_or("output has no link header")?;
    if l3i != l3o || (l3i == 18 && output[12..16] != input[12..16]) {
        return Err("the VLAN tag was not kept".into());
    }
    match ether_type {
        0x0800 => {
            let h = output.get(l3o..l3o + 20).ok_or("outer IPv4 header cut short")?;
            if h[0] != 0x45 {
                return Err(format!("sent IPv4 with version/IHL {:#04x}", h[0]));
            }
            // An echo reply's header is the request's, changed in place: as right as the
            // request's. Any other header the balancer writes is right.
            let echo_reply = h[9] == 1 && output.get(l3o + 20) == Some(&0);
            let header_right = input.get(l3i..l3i + 20).is_some_and(|r| sums_to_zero(sum(r)));
            if sums_to_zero(sum(h)) != (header_right || !echo_reply) {
                return Err("sent IPv4 header's checksum is wrong".into());
            }
            let total = usize::from(be16(h, 2).unwrap_or(0));
            let packet = output.get(l3o..l3o + total).ok_or("outer IPv4 total length beyond the frame")?;
            match h[9] {
                1 => icmp_answer(input, l3i, packet, false),
                4 | 41 => {
                    let src = IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15]));
                    let dst = IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19]));
                    if h[8] != 64 {
                        return Err(format!("outer TTL {}", h[8]));
                    }
                    encapsulation(model, input, l3i, &packet[20..], h[9], src, dst)
                }
                other => Err(format!("sent IPv4 of protocol {other}")),
            }
        }
        0x86dd => {
            let h = output.get(l3o..l3o + 40).ok_or("outer IPv6 header cut short")?;
            if h[0] >> 4 != 6 {
                return Err("outer IPv6 version".into());
            }
            let total = 40 + usize::from(be16(h, 4).unwrap_or(0));
            let packet = output.get(l3o..l3o + total).ok_or("outer IPv6 payload length beyond the frame")?;
            let src = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&h[8..24]).expect("16 bytes")));
            let dst = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&h[24..40]).expect("16 bytes")));
            match h[6] {
                58 => icmp_answer(input, l3i, packet, true),
                4 | 41 => {
                    if h[7] != 64 {
                        return Err(format!("outer hop limit {}", h[7]));
                    }
                    encapsulation(model, input, l3i, &packet[40..], h[6], src, dst)
                }
                other => Err(format!("sent IPv6 with next header {other}")),
            }
        }
        other => Err(format!("sent ethertype {other:#06x}")),
    }
}

/// `inner` (the outer packet's payload) must be the input's IP packet, its version the outer
/// protocol's, from an encapsulation source to a backend of the input's VIP.
fn encapsulation(
    model: &Model,
    input: &[u8],
    l3i: usize,
    inner: &[u8],
    protocol: u8,
    src: IpAddr,
    dst: IpAddr,
) -> Result<(), String> {
    let sent_as = input.get(l3i..l3i + inner.len()).ok_or("the inner packet is longer than the input")?;
    if inner != sent_as {
        return Err("the inner packet is not the input's IP packet".into());
    }
    let version = inner.first().map_or(0, |b| b >> 4);
    if (protocol == 4 && version != 4) || (protocol == 41 && version != 6) {
        return Err(format!("outer protocol {protocol} for an inner packet of version {version}"));
    }
    let in_prefix = match src {
        IpAddr::V4(a) => a.octets()[..3] == model.config.encap_src_v4[..3],
        IpAddr::V6(a) => a.octets()[..14] == model.config.encap_src_v6[..14],
    };
    if !in_prefix {
        return Err(format!("outer source {src} outside the encapsulation prefix"));
    }
    let allowed = backends_of(model, inner).ok_or("sent a packet whose VIP cannot be told")?;
    if !allowed.contains(&dst) {
        return Err(format!("sent to {dst}, which serves none of the packet's VIP (its backends: {allowed:?})"));
    }
    Ok(())
}

/// The backends that may receive the inner packet `ip`: its VIP's; for a later fragment any
/// VIP's of its address and protocol; for an ICMP error, the VIP of the flow it quotes.
fn backends_of(model: &Model, ip: &[u8]) -> Option<Vec<IpAddr>> {
    let (dst, protocol, l4, later_fragment) = if ip.first()? >> 4 == 4 {
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let dst = IpAddr::V4(Ipv4Addr::new(*ip.get(16)?, ip[17], ip[18], ip[19]));
        (dst, ip[9], ihl, be16(ip, 6)? & 0x1fff != 0)
    } else {
        let dst = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(ip.get(24..40)?).ok()?));
        match ip[6] {
            44 => {
                let f = ip.get(40..48)?;
                (dst, f[0], 48, be16(f, 2)? >> 3 != 0)
            }
            next => (dst, next, 40, false),
        }
    };
    if later_fragment {
        return Some(model.backends_for(dst, protocol, None));
    }
    if protocol == 1 || protocol == 58 {
        // An error quoting (VIP, port) -> client: the flow's VIP.
        let quote = ip.get(l4 + 8..)?;
        let (vip, quoted_protocol, ports) = if protocol == 1 {
            (IpAddr::V4(Ipv4Addr::new(*quote.get(12)?, quote[13], quote[14], quote[15])), quote[9], 20)
        } else {
            (IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(quote.get(8..24)?).ok()?)), quote[6], 40)
        };
        if vip != dst {
            return None;
        }
        return Some(model.backends_for(vip, quoted_protocol, Some(be16(quote, ports)?)));
    }
    Some(model.backends_for(dst, protocol, Some(be16(ip, l4 + 2)?)))
}

/// An ICMP answer to the input: from its destination to its source, a too-big message quoting
/// it or an echo reply; checksums right (an echo reply's as right as the request's).
fn icmp_answer(input: &[u8], l3i: usize, packet: &[u8], v6: bool) -> Result<(), String> {
    let asked = input.get(l3i..).ok_or("no input IP header")?;
    let (addr_len, src_at, dst_at, header) = if v6 { (16, 8, 24, 40) } else { (4, 12, 16, 20) };
    let swapped = packet.get(src_at..src_at + addr_len) == asked.get(dst_at..dst_at + addr_len)
        && packet.get(dst_at..dst_at + addr_len) == asked.get(src_at..src_at + addr_len);
    if !swapped {
        return Err("an ICMP answer not from the input's destination to its source".into());
    }
    let icmp = packet.get(header..).ok_or("ICMP answer cut short")?;
    let checks = |ip: &[u8], icmp: &[u8]| {
        if v6 {
            sums_to_zero(sum(icmp) + ipv6_pseudo_sum(&ip[8..24], &ip[24..40], icmp.len(), 58))
        } else {
            sums_to_zero(sum(icmp))
        }
    };
    match (v6, icmp.first()) {
        (false, Some(3)) | (true, Some(2)) => {
            if !checks(packet, icmp) {
                return Err("too-big answer with a wrong ICMP checksum".into());
            }
            let quote = &icmp[8..];
            if asked.get(..quote.len()) != Some(quote) {
                return Err("too-big answer does not quote the input".into());
            }
            Ok(())
        }
        (false, Some(0)) | (true, Some(129)) => {
            let request_icmp = asked.get(header..header + icmp.len()).ok_or("echo reply longer than the request")?;
            if checks(packet, icmp) != checks(asked, request_icmp) {
                return Err("echo reply checksum not as right as the request's".into());
            }
            if icmp.get(4..) != request_icmp.get(4..) {
                return Err("echo reply does not carry the request's identifier, sequence and data".into());
            }
            Ok(())
        }
        (_, kind) => Err(format!("sent ICMP type {kind:?}")),
    }
}

/// The decapsulation program: pass or drop; a changed packet is the input's inner packet, from
/// an accepted tunnel source, to one of its VIPs; a dropped one, a tunnel packet from elsewhere.
pub fn decap(model: &Model, input: &[u8], verdict: u32, output: &[u8]) -> Result<Class, String> {
    // (IP header offset, outer header length, outer source, inner destination if readable).
    let tunnel = || -> Option<(usize, usize, IpAddr, Option<IpAddr>)> {
        let (l3, ether_type) = link(input)?;
        let (outer_len, src, protocol) = match ether_type {
            0x0800 => {
                let h = input.get(l3..l3 + 20)?;
                (20, IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15])), h[9])
            }
            0x86dd => {
                let h = input.get(l3..l3 + 40)?;
                (40, IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&h[8..24]).ok()?)), h[6])
            }
            _ => return None,
        };
        if protocol != 4 && protocol != 41 {
            return None;
        }
        let inner = input.get(l3 + outer_len..)?;
        let inner_dst = if protocol == 4 {
            inner.get(16..20).map(|a| IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])))
        } else {
            inner.get(24..40).and_then(|a| <[u8; 16]>::try_from(a).ok()).map(|a| IpAddr::V6(a.into()))
        };
        Some((l3, outer_len, src, inner_dst))
    };
    let accepted = |src: IpAddr| {
        model.decap_sources.iter().any(|&(net, len)| match (net, src) {
            (IpAddr::V4(n), IpAddr::V4(s)) => u32::from(n) >> (32 - len) == u32::from(s) >> (32 - len),
            (IpAddr::V6(n), IpAddr::V6(s)) => u128::from(n) >> (128 - len) == u128::from(s) >> (128 - len),
            _ => false,
        })
    };
    match verdict {
        XDP_PASS if output == input => Ok(Class::Pass),
        XDP_PASS => {
            let (l3, outer_len, src, inner_dst) = tunnel().ok_or("changed a packet that is no tunnel packet")?;
            if !accepted(src) {
                return Err(format!("decapsulated a tunnel packet from {src}, no balancer's"));
            }
            match inner_dst {
                Some(dst) if model.decap_vips.contains(&dst) => {}
                other => return Err(format!("decapsulated a packet for {other:?}, no VIP of this backend")),
            }
            if output.get(..12) != input.get(..12) || output.get(l3..) != input.get(l3 + outer_len..) {
                return Err("the decapsulated packet is not the input's inner packet".into());
            }
            Ok(Class::Pass)
        }
        XDP_DROP => {
            let (_, _, src, _) = tunnel().ok_or("dropped a packet that is no tunnel packet")?;
            if accepted(src) {
                return Err(format!("dropped a tunnel packet from {src}, a balancer's"));
            }
            Ok(Class::Drop)
        }
        other => Err(format!("decapsulation verdict {}", verdict_name(other))),
    }
}
