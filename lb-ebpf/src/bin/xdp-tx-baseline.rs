//! The smallest useful XDP program: swap the MAC addresses and send the frame back (`XDP_TX`).
//! Benchmarks report the balancer's cost next to this one, measured in the same run.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_ebpf::access::ptr_at_mut;

#[xdp]
pub fn xdp_tx_baseline(ctx: XdpContext) -> u32 {
    let Some(macs) = ptr_at_mut::<[u8; 12]>(&ctx, 0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: ptr_at_mut checked the 12 bytes are inside the packet.
    unsafe {
        let m = macs.read_unaligned();
        let mut swapped = [0u8; 12];
        swapped[..6].copy_from_slice(&m[6..]);
        swapped[6..].copy_from_slice(&m[..6]);
        macs.write_unaligned(swapped);
    }
    xdp_action::XDP_TX
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
