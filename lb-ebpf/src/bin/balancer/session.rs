//! Session keys in the fast path (`lb_common::session`): the flow key of a datagram to a VIP
//! that balances by a key of its payload.

use aya_ebpf::{
    helpers::{bpf_xdp_load_bytes, generated::bpf_probe_read_kernel},
    programs::XdpContext,
};
use lb_common::{
    flow::{FlowKey, HashKey},
    session::{MAX_KEY_LEN, session_flow},
    vip::VipInfo,
};
use lb_ebpf::l3::{IPPROTO_UDP, Ip};

use crate::maps::{self, CONFIG};

/// The UDP header's length.
const UDP_HEADER_LEN: usize = 8;

/// Writes the key `ip`'s packet is found by in the flow table, and scheduled by, into `key`:
/// its session's if it is a datagram to a VIP with a session key whose payload holds the key,
/// else its 5-tuple. Only while some VIP has a session key (`DataplaneConfig::session_keys`)
/// does a datagram look its VIP up here. A subprogram that every packet calls, writing one stack
/// slot: the cases then reach the fast path alike, and the verifier explores what follows once
/// (a branch around the call doubled its work, past the kernel's budget).
#[inline(never)]
pub fn lookup_key(ctx: &XdpContext, ip: &Ip, key: &mut FlowKey) {
    *key = ip.flow;
    if let Some(cfg) = CONFIG.get(0)
        && cfg.session_keys != 0
        && ip.flow.protocol == IPPROTO_UDP
        && let Some(vip) = crate::find_vip(&ip.flow)
    {
        write_session(ctx, ip, vip, &cfg.flow_hash_key, key);
    }
    // Copied onto itself by a helper: the verifier then knows the same of `key` whichever was
    // written (bytes it does not track), and prunes what follows as one case. The caller sets
    // again the fields it branches on, which both cases share.
    let at = core::ptr::from_mut(key);
    // SAFETY: a FlowKey on the caller's stack, read and written whole.
    unsafe { bpf_probe_read_kernel(at.cast(), size_of::<FlowKey>() as u32, at.cast_const().cast()) };
}

/// Writes the session flow key of `ip`'s datagram (UDP) to `vip` into `key`, if the VIP has a
/// session key and the payload holds it; a payload that ends before the key is counted per VIP
/// in `LB_SESSION_MISS` (the packet is then balanced by its 5-tuple, left in `key`).
#[inline(always)]
fn write_session(ctx: &XdpContext, ip: &Ip, vip: &VipInfo, hash_key: &HashKey, key: &mut FlowKey) {
    let spec = vip.session_key;
    if !spec.is_some() {
        return;
    }
    let start = ip.l3_offset + ip.header_len() + UDP_HEADER_LEN + usize::from(spec.offset);
    let length = usize::from(spec.length);
    // The IP packet's end, not the frame's: a short frame may be padded.
    let end = ip.l3_offset + usize::from(ip.packet_len);
    let mut raw = [0u8; MAX_KEY_LEN];
    // The helper checks the frame's bounds; the length is bounded for the verifier.
    let loaded = length <= MAX_KEY_LEN
        && start + length <= end
        // SAFETY: `raw` has room for MAX_KEY_LEN >= length bytes.
        && unsafe { bpf_xdp_load_bytes(ctx.ctx, start as u32, raw.as_mut_ptr().cast(), (length & 0x1f) as u32) } == 0;
    if !loaded {
        maps::count_session_miss(vip.index);
        return;
    }
    *key = session_flow(spec.masked(raw), &ip.flow, hash_key);
}
