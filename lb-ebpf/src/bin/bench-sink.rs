//! The benchmark's sink: attached to the generator's veth, it counts the frames that the program
//! under test sent back and drops them.
#![no_std]
#![no_main]

// The crate provides the panic handler.
use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use lb_ebpf as _;

/// Frames received, per CPU.
#[map]
static SINK_RECEIVED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn bench_sink(_ctx: XdpContext) -> u32 {
    if let Some(count) = SINK_RECEIVED.get_ptr_mut(0) {
        // SAFETY: per-CPU value, only this CPU writes it.
        unsafe { *count += 1 };
    }
    xdp_action::XDP_DROP
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
