//! Session keys in the fast path (`lb_common::session`): the flow-table key of a datagram to a
//! VIP that balances by a key of its payload.

use aya_ebpf::{helpers::bpf_xdp_load_bytes, programs::XdpContext};
use lb_common::{
    flow::FlowKey,
    session::{MAX_KEY_LEN, session_flow},
};
use lb_ebpf::l3::Ip;

use crate::maps::{self, CONFIG, SESSION_KEYS};

/// The UDP header's length.
const UDP_HEADER_LEN: usize = 8;

/// Replaces `key` (the datagram's 5-tuple) by its session's key if `ip`'s datagram goes to a
/// VIP with a session key and its payload holds the key; a payload that ends before the key is
/// counted per VIP in `LB_SESSION_MISS` and keeps its 5-tuple. A subprogram: the VIP lookup
/// and the digest stay out of the fast path's frame.
#[inline(never)]
pub fn rekey(ctx: &XdpContext, ip: &Ip, key: &mut FlowKey) {
    let (Some(vip), Some(cfg)) = (crate::find_vip(&ip.flow), CONFIG.get(0)) else { return };
    let Some(&spec) = SESSION_KEYS.get(vip.index) else { return };
    if !spec.is_some() {
        return;
    }
    // 1..=16 by arithmetic the verifier follows (comparisons the compiler may move); the agent
    // writes lengths in that range, and 0 was ruled out above.
    let length = (usize::from(spec.length).wrapping_sub(1) & (MAX_KEY_LEN - 1)) + 1;
    let start = ip.l3_offset + ip.header_len() + UDP_HEADER_LEN + usize::from(spec.offset);
    // The IP packet's end, not the frame's: a short frame may be padded.
    let end = ip.l3_offset + usize::from(ip.packet_len);
    let mut raw = [0u8; MAX_KEY_LEN];
    // The helper checks the frame's bounds.
    let loaded = start + length <= end
        // SAFETY: `raw` has room for MAX_KEY_LEN >= length bytes.
        && unsafe { bpf_xdp_load_bytes(ctx.ctx, start as u32, raw.as_mut_ptr().cast(), length as u32) } == 0;
    if !loaded {
        maps::count_session_miss(vip.index);
        return;
    }
    *key = session_flow(spec.masked(raw), &ip.flow, &cfg.flow_hash_key);
}

/// Rewrites two bytes of `key` with themselves, at indexes taken from `varying` (any packet
/// byte): nothing changes, but the verifier stops tracking what the key's bytes hold (a store
/// at an offset it cannot tell makes every byte it may reach untracked), so a session's key and
/// a 5-tuple reach the rest of the fast path as one case. Tracked apart, they doubled the paths
/// it explores, past the kernel's budget. The caller sets again the fields it branches on.
#[inline(always)]
pub fn untrack(key: &mut FlowKey, varying: u8) {
    let bytes = core::ptr::from_mut(key).cast::<u8>();
    // Bytes 0..32 (the addresses), then 31..39 (ports, protocol, family, kind; the padding is
    // zero either way). Hidden from the compiler, which would otherwise OR a small index into
    // the aligned pointer, an operation the verifier refuses on pointers.
    for i in [usize::from(varying) & 31, 31 + (usize::from(varying) & 7)] {
        let i = core::hint::black_box(i);
        // SAFETY: i < 39 < size_of::<FlowKey>(); volatile so that the compiler keeps the no-op.
        unsafe { bytes.add(i).write_volatile(bytes.add(i).read_volatile()) };
    }
}
