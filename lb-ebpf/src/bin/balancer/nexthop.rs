//! Next hop and verdict for an encapsulated packet.
//!
//! The agent resolves each backend's next hop from the kernel's route and neighbour tables
//! (`lb_common::nexthop`); a packet to a backend with a known next hop gets its MACs from there
//! ([`to_resolved`]). Without one (not resolved yet, neighbour gone), [`from_fib`]: the FIB
//! (`bpf_fib_lookup`, as if the packet were forwarded from the ingress interface) gives the
//! egress interface and both MAC addresses. Egress = ingress: `XDP_TX`. Another interface:
//! redirect through the `EGRESS` devmap. No usable answer (no route, no neighbour entry yet,
//! forwarding disabled): `XDP_TX` to the configured fallback MAC, sourced from the MAC the frame was
//! sent to. VLAN-tagged frames keep their tag and so must leave where they came in: they use the
//! FIB's MACs only when its egress is the ingress interface, the fallback otherwise.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams},
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use lb_common::{backend::Backend, counters::Reason, family, nexthop::NextHop};
use lb_ebpf::{
    access::{read, write},
    l2::ETH_LEN,
};

use crate::{
    maps::{CONFIG, EGRESS},
    verdict::{self, Verdict},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// To `hop`, the backend's next hop as the agent resolved it; `None` if it is not known or the
/// frame cannot take it: a VLAN-tagged frame keeps its tag and so must leave where it came in,
/// and one whose next hop is elsewhere asks the FIB. `l3` is where the outer header starts.
#[inline(always)]
pub fn to_resolved(ctx: &XdpContext, hop: &NextHop, l3: usize) -> Option<Verdict> {
    let ingress = ctx.ingress_ifindex() as u32;
    if !hop.is_known() || (hop.ifindex != ingress && l3 != ETH_LEN) {
        return None;
    }
    Some(send_to(ctx, hop, ingress))
}

#[inline(always)]
fn send_to(ctx: &XdpContext, hop: &NextHop, ingress: u32) -> Verdict {
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&hop.dst_mac);
    macs[6..].copy_from_slice(&hop.src_mac);
    if write(ctx, 0, macs).is_none() {
        return verdict::drop(Reason::DropEncapFailed);
    }
    if hop.ifindex == ingress {
        return verdict::tx(Reason::TxNextHop);
    }
    match EGRESS.redirect(hop.ifindex, 0) {
        Ok(action) => (action, Reason::TxRedirect),
        Err(_) => verdict::drop(Reason::DropNoEgress),
    }
}

/// From the FIB, for a backend without a resolved next hop. `l3` is where the outer header
/// starts, `len` the outer packet's length. Kept out of line: its own stack frame holds the FIB
/// lookup's parameters (and the configuration is looked up here: a BPF function takes at most
/// five arguments, the verdict's return slot being one).
#[inline(never)]
pub fn from_fib(ctx: &XdpContext, backend: &Backend, l3: usize, len: u16) -> Verdict {
    let Some(cfg) = CONFIG.get(0) else {
        return verdict::drop(Reason::DropNoEgress);
    };
    let ingress = ctx.ingress_ifindex() as u32;
    // SAFETY: all-zero is a valid bpf_fib_lookup (plain integers and unions of integers).
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.ifindex = ingress;
    params.__bindgen_anon_1.tot_len = len;
    // The outer source was just written into the packet; the destination is the backend.
    if backend.family == family::IPV4 {
        let Some(src) = read::<[u8; 4]>(ctx, l3 + 12) else {
            return verdict::drop(Reason::DropEncapFailed);
        };
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(src);
        let d = backend.addr;
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([d[0], d[1], d[2], d[3]]);
    } else {
        let Some(src) = read::<[u8; 16]>(ctx, l3 + 8) else {
            return verdict::drop(Reason::DropEncapFailed);
        };
        params.family = AF_INET6;
        // SAFETY: plain byte arrays to plain words of the same size (network order kept).
        params.__bindgen_anon_3.ipv6_src = unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(src) };
        params.__bindgen_anon_4.ipv6_dst = unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(backend.addr) };
    }
    // SAFETY: params is a valid, fully initialised lookup structure on our stack.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx.cast(), &raw mut params, size_of::<FibParams>() as i32, 0) } as u32;

    let tagged = l3 != ETH_LEN;
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED {
        return verdict::drop(Reason::DropTooBig);
    }
    if rc == BPF_FIB_LKUP_RET_SUCCESS && (params.ifindex == ingress || !tagged) {
        if write(ctx, 0, params.dmac).is_none() || write(ctx, 6, params.smac).is_none() {
            return verdict::drop(Reason::DropEncapFailed);
        }
        if params.ifindex == ingress {
            return verdict::tx(Reason::TxFib);
        }
        return match EGRESS.redirect(params.ifindex, 0) {
            Ok(action) => (action, Reason::TxRedirect),
            Err(_) => verdict::drop(Reason::DropNoEgress),
        };
    }

    if cfg.fallback_dst_mac == [0; 6] {
        return verdict::drop(Reason::DropNoEgress);
    }
    // The source MAC is already this host's (set by the encapsulation).
    if write(ctx, 0, cfg.fallback_dst_mac).is_none() {
        return verdict::drop(Reason::DropEncapFailed);
    }
    verdict::tx(Reason::TxFallback)
}
