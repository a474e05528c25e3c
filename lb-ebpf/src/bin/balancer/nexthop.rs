//! Next hop and verdict for an encapsulated packet.
//!
//! The FIB (bpf_fib_lookup, as if the packet were forwarded from the ingress interface) gives the
//! egress interface and both MAC addresses. Egress = ingress: XDP_TX. Another interface:
//! redirect through the `EGRESS` devmap. No usable answer (no route, no neighbour entry yet,
//! forwarding disabled): XDP_TX to the configured fallback MAC, sourced from the MAC the frame was
//! sent to. VLAN-tagged frames keep their tag and so must leave where they came in: they use the
//! FIB's MACs only when its egress is the ingress interface, the fallback otherwise.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action},
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{counters::Reason, dataplane::DataplaneConfig, family};
use lb_ebpf::access::ptr_at_mut;

use crate::{encap::Outer, maps::EGRESS};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

#[inline(always)]
pub fn forward(ctx: &XdpContext, outer: &Outer, tagged: bool, cfg: &DataplaneConfig) -> (u32, Reason) {
    let ingress = ctx.ingress_ifindex() as u32;
    // SAFETY: all-zero is a valid bpf_fib_lookup (plain integers and unions of integers).
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.ifindex = ingress;
    params.__bindgen_anon_1.tot_len = outer.len;
    if outer.family == family::IPV4 {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([outer.src[0], outer.src[1], outer.src[2], outer.src[3]]);
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([outer.dst[0], outer.dst[1], outer.dst[2], outer.dst[3]]);
    } else {
        params.family = AF_INET6;
        // SAFETY: plain byte arrays to plain words of the same size (network order kept).
        params.__bindgen_anon_3.ipv6_src = unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(outer.src) };
        params.__bindgen_anon_4.ipv6_dst = unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(outer.dst) };
    }
    // SAFETY: params is a valid, fully initialised lookup structure on our stack.
    let rc =
        unsafe { bpf_fib_lookup(ctx.ctx as *mut _, &mut params, core::mem::size_of::<FibParams>() as i32, 0) } as u32;

    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED {
        return (xdp_action::XDP_DROP, Reason::DropTooBig);
    }
    if rc == BPF_FIB_LKUP_RET_SUCCESS && (params.ifindex == ingress || !tagged) {
        if set_macs(ctx, params.smac, params.dmac).is_none() {
            return (xdp_action::XDP_DROP, Reason::DropEncapFailed);
        }
        if params.ifindex == ingress {
            return (xdp_action::XDP_TX, Reason::TxFib);
        }
        return match EGRESS.redirect(params.ifindex, 0) {
            Ok(action) => (action, Reason::TxRedirect),
            Err(_) => (xdp_action::XDP_DROP, Reason::DropNoEgress),
        };
    }

    if cfg.fallback_dst_mac == [0; 6] {
        return (xdp_action::XDP_DROP, Reason::DropNoEgress);
    }
    // The frame was addressed to this host's interface: that MAC is our source now.
    if set_macs(ctx, outer.received_on, cfg.fallback_dst_mac).is_none() {
        return (xdp_action::XDP_DROP, Reason::DropEncapFailed);
    }
    (xdp_action::XDP_TX, Reason::TxFallback)
}

#[inline(always)]
fn set_macs(ctx: &XdpContext, src: [u8; 6], dst: [u8; 6]) -> Option<()> {
    let p = ptr_at_mut::<[u8; 12]>(ctx, 0)?;
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&dst);
    macs[6..].copy_from_slice(&src);
    // SAFETY: ptr_at_mut checked the 12 bytes are inside the packet.
    unsafe { p.write_unaligned(macs) };
    Some(())
}
